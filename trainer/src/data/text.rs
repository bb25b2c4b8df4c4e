//! Labelled text in every format: JSONL, CSV, HF parquet and the aclImdb folder layout.

use std::path::{Path, PathBuf};

use super::lines::*;
use super::{DataError, Loaded, OnMalformed, TextExample};

/// Reads labelled text: `.jsonl`, `.csv` (columns `text_field`, `label_field`), or an aclImdb
/// folder (`dir/pos`, `dir/neg`, or `dir/<split>/{pos,neg}` with `split` "train").
pub fn load_text(path: &Path, on_malformed: OnMalformed) -> Result<Loaded<TextExample>, DataError> {
    load_text_fields(path, "text", Some("label"), on_malformed)
}

/// Texts without labels (for SFT): the formats of [`load_text`] with the label ignored, plus
/// `.txt` files with one example per line. Labels read as 0.
pub fn load_unlabelled(path: &Path, on_malformed: OnMalformed) -> Result<Loaded<TextExample>, DataError> {
    if path.extension().is_some_and(|e| e == "txt") {
        let mut loaded = Loaded::new();
        for_each_line(path, |number, line| {
            let row =
                line.map(|l| TextExample { text: l.to_string(), label: 0 }).map_err(|_| too_long(path, number, "line"));
            loaded.push(row, on_malformed)
        })?;
        return loaded.finish(path);
    }
    load_text_fields(path, "text", None, on_malformed)
}

/// [`load_text`] with the column names given; `label_field_name: None` reads no label (0).
pub fn load_text_fields(
    path: &Path,
    text_field: &str,
    label_field_name: Option<&str>,
    on_malformed: OnMalformed,
) -> Result<Loaded<TextExample>, DataError> {
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    if path.is_dir() {
        return load_aclimdb(path);
    }
    match extension.as_str() {
        "jsonl" | "json" => read_jsonl(path, on_malformed, |v, line| {
            let label = match label_field_name {
                Some(field) => label_field(v, field, path, line)?,
                None => 0,
            };
            Ok(TextExample { text: string_field(v, text_field, path, line)?, label })
        }),
        "csv" => load_csv(path, text_field, label_field_name, on_malformed),
        "parquet" => load_parquet(path, text_field, label_field_name, on_malformed),
        _ => Err(DataError::UnknownFormat { path: path.to_path_buf() }),
    }
}

fn load_csv(
    path: &Path,
    text_field: &str,
    label_field_name: Option<&str>,
    on_malformed: OnMalformed,
) -> Result<Loaded<TextExample>, DataError> {
    let mut reader =
        csv::Reader::from_path(path).map_err(|e| malformed(path, 1, "header", &format!("a CSV header ({e})")))?;
    let headers = reader.headers().map_err(|e| malformed(path, 1, "header", &format!("a CSV header ({e})")))?.clone();
    let column = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| malformed(path, 1, name, "a column of that name"))
    };
    let text_col = column(text_field)?;
    let label_col = label_field_name.map(column).transpose()?;
    let mut loaded = Loaded::new();
    for (index, record) in reader.records().enumerate() {
        let line = index + 2;
        let row = record.map_err(|e| malformed(path, line, "record", &format!("a CSV record ({e})"))).and_then(|r| {
            let text = r.get(text_col).ok_or_else(|| malformed(path, line, text_field, "a value"))?;
            if text.len() > MAX_ROW_BYTES {
                return Err(too_long(path, line, text_field));
            }
            let label = match (label_col, label_field_name) {
                (Some(col), Some(name)) => {
                    r.get(col).and_then(parse_label).ok_or_else(|| malformed(path, line, name, LABEL_EXPECTED))?
                }
                _ => 0,
            };
            let text = text.to_string();
            Ok(TextExample { text, label })
        });
        loaded.push(row, on_malformed)?;
    }
    loaded.finish(path)
}

/// Parquet as the Hugging Face hub serves datasets (`imdb`: `text` string, `label` int64). Rows
/// are numbered from 1 in errors.
/// How long the parquet reader may go without yielding a row before the file is refused. The
/// `parquet` crate (60.1) runs on without end on some corrupt files (fuzzing found one: two bytes
/// changed in `fixtures/data/imdb_sample.parquet`, kept as `fixtures/data/corrupt_spins.parquet`,
/// yields rows forever), so rows are read on a thread watched by this deadline, and never more
/// rows than the file's metadata declares.
pub const PARQUET_STALL: std::time::Duration = std::time::Duration::from_secs(10);

fn load_parquet(
    path: &Path,
    text_field: &str,
    label_field_name: Option<&str>,
    on_malformed: OnMalformed,
) -> Result<Loaded<TextExample>, DataError> {
    let (sender, rows) = std::sync::mpsc::sync_channel(256);
    let (owned_path, text_field_owned, label_owned) =
        (path.to_path_buf(), text_field.to_string(), label_field_name.map(str::to_string));
    // On a stall the reader thread is left behind (nothing can stop it); the command fails.
    std::thread::spawn(move || read_parquet_rows(&owned_path, &text_field_owned, label_owned.as_deref(), sender));
    let mut loaded = Loaded::new();
    loop {
        match rows.recv_timeout(PARQUET_STALL) {
            Ok(Ok(None)) => break,
            Ok(Ok(Some(row))) => loaded.push(row, on_malformed)?,
            Ok(Err(fatal)) => return Err(fatal),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                // The reader panicked (the parquet crate does on some corrupt files).
                return Err(malformed(
                    path,
                    loaded.rows.len() + loaded.skipped + 1,
                    "file",
                    "a parquet file the reader can decode",
                ));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let seconds = PARQUET_STALL.as_secs();
                let row = loaded.rows.len() + loaded.skipped + 1;
                return Err(malformed(
                    path,
                    row,
                    "file",
                    &format!("a parquet file the reader can get through (no row for {seconds} s)"),
                ));
            }
        }
    }
    loaded.finish(path)
}

/// A parquet row, as `Ok(Some(Ok(row)))` or a malformed row `Ok(Some(Err))`; `Ok(None)` at the
/// end; `Err` when the file cannot be read at all.
type ParquetRow = Result<Option<Result<TextExample, DataError>>, DataError>;

fn read_parquet_rows(
    path: &Path,
    text_field: &str,
    label_field_name: Option<&str>,
    rows: std::sync::mpsc::SyncSender<ParquetRow>,
) {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;
    let opened = (|| {
        let file = std::fs::File::open(path).map_err(io_error(path))?;
        let reader = SerializedFileReader::new(file)
            .map_err(|e| malformed(path, 0, "file", &format!("a parquet file ({e})")))?;
        let schema = reader.metadata().file_metadata().schema_descr_ptr();
        let column = |name: &str| {
            schema
                .columns()
                .iter()
                .position(|c| c.name() == name)
                .ok_or_else(|| malformed(path, 0, name, "a column of that name"))
        };
        let text_col = column(text_field)?;
        let label_col = label_field_name.map(column).transpose()?;
        Ok((reader, text_col, label_col))
    })();
    let (reader, text_col, label_col) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            let _ = rows.send(Err(e));
            return;
        }
    };
    let iter = match reader.get_row_iter(None) {
        Ok(iter) => iter,
        Err(e) => {
            let _ = rows.send(Err(malformed(path, 0, "file", &format!("readable rows ({e})"))));
            return;
        }
    };
    // Corrupt files can make the row iterator run on past the rows the file holds.
    let declared = usize::try_from(reader.metadata().file_metadata().num_rows()).unwrap_or(0);
    for (index, row) in iter.enumerate() {
        let line = index + 1;
        if index >= declared {
            let _ = rows.send(Err(malformed(
                path,
                line,
                "file",
                &format!("no more rows than its metadata declares ({declared})"),
            )));
            return;
        }
        let row = row.map_err(|e| malformed(path, line, "row", &format!("a readable row ({e})"))).and_then(|row| {
            let text = row.get_string(text_col).map_err(|_| malformed(path, line, text_field, "a string"))?;
            if text.len() > MAX_ROW_BYTES {
                return Err(too_long(path, line, text_field));
            }
            let text = text.clone();
            let label = match (label_col, label_field_name) {
                (Some(col), Some(name)) => row
                    .get_long(col)
                    .or_else(|_| row.get_int(col).map(i64::from))
                    .ok()
                    .filter(|l| matches!(l, 0 | 1))
                    .ok_or_else(|| malformed(path, line, name, LABEL_EXPECTED))?,
                _ => 0,
            };
            Ok(TextExample { text, label })
        });
        if rows.send(Ok(Some(row))).is_err() {
            return;
        }
    }
    let _ = rows.send(Ok(None));
}

/// aclImdb layout: `pos/*.txt` and `neg/*.txt` under `dir` (or under `dir/train`).
fn load_aclimdb(dir: &Path) -> Result<Loaded<TextExample>, DataError> {
    let root = if dir.join("pos").is_dir() { dir.to_path_buf() } else { dir.join("train") };
    if !root.join("pos").is_dir() || !root.join("neg").is_dir() {
        return Err(DataError::UnknownFormat { path: dir.to_path_buf() });
    }
    let mut rows = Vec::new();
    for (sub, label) in [("pos", 1), ("neg", 0)] {
        let folder = root.join(sub);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
            .map_err(io_error(&folder))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .collect();
        files.sort();
        for file in files {
            let size = std::fs::metadata(&file).map_err(io_error(&file))?.len();
            if size > MAX_ROW_BYTES as u64 {
                return Err(too_long(&file, 1, "review"));
            }
            let text = std::fs::read_to_string(&file).map_err(io_error(&file))?;
            rows.push(TextExample { text, label });
        }
    }
    if rows.is_empty() {
        return Err(DataError::Empty { path: dir.to_path_buf() });
    }
    Ok(Loaded { rows, skipped: 0 })
}
