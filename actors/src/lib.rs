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
//! [`PpoTrainer::step`](rlhf_trainer::ppo_update::PpoTrainer::step), the same code
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
pub mod service;
pub mod validation;
pub mod weights;

use std::time::Duration;

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
pub async fn serve<B: AutodiffKernels>(
    mut args: CoordinatorArgs<B>,
    listener: tokio::net::TcpListener,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let grace = Duration::from_millis(args.config.runtime.heartbeat_interval_ms * 3);
    let (finished, finished_rx) = tokio::sync::oneshot::channel::<()>();
    if args.start_version as usize >= args.config.train.iterations {
        return Err(format!(
            "the run already has {} policy versions (train.iterations = {})",
            args.start_version, args.config.train.iterations
        )
        .into());
    }
    let on_done = std::mem::replace(&mut args.on_done, Box::new(|_, _| {}));
    args.on_done = Box::new(move |trainer, totals| {
        on_done(trainer, totals);
        let _ = finished.send(());
    });
    let (coordinator, mut handle) = Actor::spawn(Some("coordinator".into()), Coordinator::<B>::default(), args).await?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<LearnerServer<service::LearnerService>>().await;
    let child = |name: &str| ractor::registry::where_is(name).ok_or(format!("the {name} actor did not start"));
    let membership: ActorRef<membership::MembershipMsg> = child(coordinator::MEMBERSHIP)?.into();
    let publisher: ActorRef<publisher::PublisherMsg> = child(coordinator::PUBLISHER)?.into();
    let service =
        LearnerServer::new(service::LearnerService { coordinator: coordinator.clone(), membership, publisher })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut completed = false;
    let shutdown = async {
        tokio::select! {
            result = finished_rx => {
                completed = result.is_ok();
                // Workers learn that the run is done from their next lease or heartbeat.
                tokio::time::sleep(grace).await;
            }
            // The coordinator stopped on its own: a failure (its supervision policy logs why).
            _ = &mut handle => {}
        }
    };
    // Larger HTTP/2 windows let a weight stream approach loopback speed (see the bench).
    tonic::transport::Server::builder()
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(32 << 20)
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
        .await?;
    coordinator.stop(None);
    if !handle.is_finished() {
        let _ = handle.await;
    }
    if !completed {
        return Err("the learner stopped before the run ended (see the log)".into());
    }
    Ok(())
}
