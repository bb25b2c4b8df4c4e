//! Reading rows: line-by-line with a size cap, and the field helpers every format shares.

use std::path::Path;

use serde_json::Value;

use super::DataError;

pub(super) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |error| DataError::Io { path: path.to_path_buf(), error }
}

pub(super) fn malformed(path: &Path, line: usize, field: &str, expected: &str) -> DataError {
    DataError::Malformed { path: path.to_path_buf(), line, field: field.to_string(), expected: expected.to_string() }
}

/// The most bytes one row (a JSONL or text line, a CSV field, a review file) may hold. Longer
/// rows are malformed (skippable with `--skip-malformed`) and are never held in memory whole:
/// tokenising a 50 MB line would take gigabytes.
pub const MAX_ROW_BYTES: usize = 1 << 20;

pub(super) fn too_long(path: &Path, line: usize, field: &str) -> DataError {
    malformed(path, line, field, &format!("at most {MAX_ROW_BYTES} bytes (MAX_ROW_BYTES)"))
}

/// Calls `each(line_number, line)` for every non-empty line of `path` (split on '\n' only:
/// review texts may hold other Unicode line separators). A line over [`MAX_ROW_BYTES`] is read
/// past, not kept, and passed as `Err(length)`.
pub(super) fn for_each_line(
    path: &Path,
    mut each: impl FnMut(usize, Result<&str, usize>) -> Result<(), DataError>,
) -> Result<(), DataError> {
    use std::io::{BufRead, Read};
    let file = std::fs::File::open(path).map_err(io_error(path))?;
    let mut reader = std::io::BufReader::new(file);
    let mut buffer = Vec::new();
    let mut number = 0;
    loop {
        buffer.clear();
        number += 1;
        let read =
            reader.by_ref().take(MAX_ROW_BYTES as u64 + 1).read_until(b'\n', &mut buffer).map_err(io_error(path))?;
        if read == 0 {
            return Ok(());
        }
        if buffer.len() > MAX_ROW_BYTES && buffer.last() != Some(&b'\n') {
            // Skip the rest of the line without keeping it.
            let mut length = buffer.len();
            loop {
                let chunk = reader.fill_buf().map_err(io_error(path))?;
                if chunk.is_empty() {
                    break;
                }
                match chunk.iter().position(|&b| b == b'\n') {
                    Some(end) => {
                        length += end;
                        reader.consume(end + 1);
                        break;
                    }
                    None => {
                        let n = chunk.len();
                        length += n;
                        reader.consume(n);
                    }
                }
            }
            each(number, Err(length))?;
            continue;
        }
        let line = String::from_utf8_lossy(&buffer);
        let line = line.trim_end_matches(['\n', '\r']);
        if !line.trim().is_empty() {
            each(number, Ok(line))?;
        }
    }
}

pub(super) fn string_field(value: &Value, field: &str, path: &Path, line: usize) -> Result<String, DataError> {
    value.get(field).and_then(Value::as_str).map(str::to_string).ok_or_else(|| malformed(path, line, field, "a string"))
}

/// What a sentiment label may be.
pub(super) const LABEL_EXPECTED: &str = "a sentiment label: 0 or 1, or neg/pos";

pub(super) fn label_field(value: &Value, field: &str, path: &Path, line: usize) -> Result<i64, DataError> {
    let label = match value.get(field) {
        Some(Value::Number(n)) => n.as_i64().filter(|l| matches!(l, 0 | 1)),
        Some(Value::Bool(b)) => Some(*b as i64),
        Some(Value::String(s)) => parse_label(s),
        _ => None,
    };
    label.ok_or_else(|| malformed(path, line, field, LABEL_EXPECTED))
}

/// Labels written as text: 0 or 1, or pos/positive/neg/negative.
pub(super) fn parse_label(text: &str) -> Option<i64> {
    match text.trim().to_ascii_lowercase().as_str() {
        "pos" | "positive" | "1" => Some(1),
        "neg" | "negative" | "0" => Some(0),
        _ => None,
    }
}
