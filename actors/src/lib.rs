//! The learner process: the coordinator actor (membership, prompt leases, experience buffer, the
//! PPO update on a blocking thread, weight publishing) behind its gRPC service.
//!
//! Modules, parents before children:
//! - [`service`] — gRPC → one message per call to the actor that owns the answer;
//! - [`coordinator`] — the root actor; its bookkeeping (leases, buffer, totals) is the plain
//!   [`coordinator::ledger::Ledger`];
//! - [`membership`], [`ppo_learner`], [`publisher`] — the coordinator's children; the first two
//!   report to it through their own event types ([`membership::MembershipEvent`],
//!   [`ppo_learner::LearnerEvent`]);
//! - [`accounting`], [`validation`], [`weights`], [`config`] — plain data and checks, no actors.
//!
//! **Invariant:** no tensor math lives here; the PPO update is `rlhf_trainer`'s
//! [`PpoTrainer::step`](rlhf_trainer::ppo::PpoTrainer::step), the same code
//! `rlhf ppo --local` runs.
//!
//! **Invariant:** modules depend on each other in one direction only: a child actor never names
//! its parent's module (a test reads the sources and checks the graph has no cycle).

pub mod accounting;
pub mod config;
pub mod coordinator;
pub mod membership;
pub mod ppo_learner;
pub mod publisher;
pub mod run_dir;
pub mod service;
pub mod validation;
pub mod weights;

use std::time::Duration;
use tonic::service::interceptor::InterceptedService;

use ractor::{Actor, ActorRef};
use rlhf_proto::v1::learner_server::LearnerServer;
use rlhf_trainer::AutodiffKernels;

pub use config::LearnerConfig;
pub use coordinator::{Coordinator, CoordinatorArgs};

/// Logs a message handler's error at `error` level, naming the actor, before ractor stops the
/// actor: a supervisor hears of a child's failure, but a root actor's error would vanish with it.
pub(crate) fn logged(
    actor: &str,
    result: Result<(), ractor::ActorProcessingErr>,
) -> Result<(), ractor::ActorProcessingErr> {
    if let Err(error) = &result {
        tracing::error!(actor, %error, "actor failed");
    }
    result
}

/// Largest gRPC message accepted or sent (rollout batches; weights travel in 1 MiB chunks).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Runs the learner until the run is over: serves the gRPC service on `listener`, and returns
/// after the last iteration once workers have had time to hear that the run is done.
/// `security` says how the port is secured (TLS, the token every call but health's must carry)
/// and where plain-text health goes.
pub async fn serve<B: AutodiffKernels>(
    mut args: CoordinatorArgs<B>,
    listener: tokio::net::TcpListener,
    mut security: rlhf_secure::ServerSecurity,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let grace = Duration::from_millis(args.config.runtime.heartbeat_interval_ms * 3);
    // The run's end: Ok once its outputs are written, or why they could not be.
    let (finished, finished_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    if args.start_version as usize >= args.config.train.iterations {
        return Err(format!(
            "the run already has {} policy versions (train.iterations = {})",
            args.start_version, args.config.train.iterations
        )
        .into());
    }
    let on_done = std::mem::replace(&mut args.on_done, Box::new(|_, _| Ok(())));
    args.on_done = Box::new(move |trainer, totals| {
        let result = on_done(trainer, totals);
        let _ = finished.send(result.clone());
        result
    });
    let (coordinator, mut handle) = Actor::spawn(Some("coordinator".into()), Coordinator::<B>::default(), args).await?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<LearnerServer<service::LearnerService>>().await;
    let child = |name: &str| ractor::registry::where_is(name).ok_or(format!("the {name} actor did not start"));
    let membership: ActorRef<membership::MembershipMsg> = child(coordinator::MEMBERSHIP)?.into();
    let publisher: ActorRef<publisher::PublisherMsg> = child(coordinator::PUBLISHER)?.into();
    security.spawn_health(&health, std::future::pending());
    let service =
        LearnerServer::new(service::LearnerService { coordinator: coordinator.clone(), membership, publisher })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // Every learner call carries the token (when one is set); health stays open for probes.
    let service = InterceptedService::new(service, security.token_check("rlhf.v1.Learner"));
    let mut completed = false;
    let mut failed = None;
    let mut stopped = None;
    let shutdown = async {
        tokio::select! {
            result = finished_rx => {
                match result {
                    Ok(Ok(())) => completed = true,
                    Ok(Err(error)) => failed = Some(error),
                    Err(_) => {}
                }
                // Workers learn that the run is done from their next lease or heartbeat.
                tokio::time::sleep(grace).await;
            }
            // The coordinator stopped on its own: a failure (its supervision policy logs why).
            _ = &mut handle => {}
            // SIGTERM (a node drain, a Slurm time limit, `docker stop`): keep what was trained.
            _ = stop => stopped = Some(checkpoint_before_stopping::<B>().await),
        }
    };
    // Larger HTTP/2 windows let a weight stream approach loopback speed (see the bench).
    security
        .builder()?
        // Connections of workers that vanished without closing them (killed hosts, partitions)
        // are found by pings and closed.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(32 << 20)
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
        .await?;
    if stopped.is_some() {
        // What is queued (the last update's record) is handled before the coordinator stops.
        let _ = coordinator.drain();
    } else {
        coordinator.stop(None);
    }
    if !handle.is_finished() {
        let _ = handle.await;
    }
    match stopped {
        Some(result) => result,
        None if completed => Ok(()),
        None => Err(failed.unwrap_or_else(|| "the learner stopped before the run ended (see the log)".into()).into()),
    }
}

/// Asks the PPO learner to finish its running update and checkpoint the newest version.
async fn checkpoint_before_stopping<B: AutodiffKernels>() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing::info!("stop requested: finishing the running update, then writing a checkpoint");
    let cell = ractor::registry::where_is(coordinator::PPO_LEARNER).ok_or("the PPO learner is gone")?;
    let learner: ractor::ActorRef<ppo_learner::PpoLearnerMsg<B>> = cell.into();
    match ractor::call!(learner, ppo_learner::PpoLearnerMsg::Stop)? {
        Ok(Some(version)) => {
            tracing::info!(
                policy_version = version,
                "stopped with a checkpoint; restart with --resume (or --resume auto)"
            )
        }
        Ok(None) => tracing::info!("stopped; the newest version was checkpointed already"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// The top-level modules each file of this crate names through `crate::` (comments aside):
    /// module -> the modules it depends on. The crate root, which declares them all, is left out.
    fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
        fn visit(dir: &Path, top: Option<&str>, graph: &mut BTreeMap<String, BTreeSet<String>>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
                let module = top.map_or(stem.clone(), str::to_string);
                if path.is_dir() {
                    visit(&path, Some(&module), graph);
                } else if path.extension().is_some_and(|e| e == "rs") && !(top.is_none() && stem == "lib") {
                    let code: String = std::fs::read_to_string(&path)
                        .unwrap()
                        .lines()
                        .filter(|line| !line.trim_start().starts_with("//"))
                        .collect::<Vec<_>>()
                        .join("\n");
                    let uses = graph.entry(module.clone()).or_default();
                    for (at, _) in code.match_indices("crate::") {
                        let rest = &code[at + "crate::".len()..];
                        // `crate::{a, b::c}` names several modules at once.
                        let names = match rest.strip_prefix('{') {
                            Some(group) => group[..group.find('}').unwrap()].split(',').map(str::trim).collect(),
                            None => vec![rest],
                        };
                        for name in names {
                            let name: String = name.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                            if name != module {
                                uses.insert(name);
                            }
                        }
                    }
                }
            }
        }
        let mut graph = BTreeMap::new();
        visit(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), None, &mut graph);
        // Items of the crate root (`crate::logged`) are not modules.
        for uses in graph.values_mut() {
            uses.retain(|name| Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("src/{name}.rs")).exists());
        }
        graph
    }

    #[test]
    fn modules_depend_on_each_other_without_cycles() {
        let graph = module_graph();
        assert!(graph["coordinator"].contains("membership") && graph["coordinator"].contains("ppo_learner"));
        for child in ["membership", "ppo_learner", "publisher", "accounting"] {
            assert!(!graph[child].contains("coordinator"), "{child} names the coordinator: {:?}", graph[child]);
        }
        // Depth-first search for a path from a module back to itself.
        fn cycle<'a>(
            graph: &'a BTreeMap<String, BTreeSet<String>>,
            module: &'a str,
            path: &mut Vec<&'a str>,
        ) -> Option<String> {
            if let Some(start) = path.iter().position(|m| *m == module) {
                return Some(format!("{} -> {module}", path[start..].join(" -> ")));
            }
            path.push(module);
            for next in graph.get(module).into_iter().flatten() {
                if let Some(found) = cycle(graph, next, path) {
                    return Some(found);
                }
            }
            path.pop();
            None
        }
        for module in graph.keys() {
            assert_eq!(cycle(&graph, module, &mut Vec::new()), None, "a module cycle");
        }
    }
}
