//! The membership actor: workers join, heartbeat, and expire. It tells its parent (the
//! coordinator, which owns leases) when a worker joins or expires, as [`MembershipEvent`]s, and
//! answers heartbeats with the current policy version, so workers fetch new weights between
//! leases.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort};
use rlhf_proto::v1 as pb;
use tonic::Status;

/// What membership tells its parent.
pub enum MembershipEvent {
    /// A worker joined. The parent answers once the worker may take leases; only then is the
    /// worker told its id.
    WorkerJoined { worker_id: u64, name: String, reply: RpcReplyPort<()> },
    /// A worker stopped heartbeating and was forgotten; its leases must be re-issued.
    WorkerExpired { worker_id: u64 },
}

pub enum MembershipMsg {
    /// Refused with `ResourceExhausted` at `runtime.max_workers` live workers.
    Join {
        name: String,
        /// Where its call came from, as the learner sees it.
        address: String,
        reply: RpcReplyPort<Result<pb::JoinResponse, Status>>,
    },
    /// Each live worker's address and seconds since its last heartbeat (for `rlhf status`).
    Snapshot {
        reply: RpcReplyPort<Vec<(u64, String, f64)>>,
    },
    Heartbeat {
        worker_id: u64,
        reply: RpcReplyPort<Result<pb::HeartbeatResponse, Status>>,
    },
    /// A new policy version was published (or the run ended).
    Progress {
        version: u64,
        done: bool,
    },
    /// Expire silent workers (sent by a timer).
    Tick,
}

/// What every joining worker is told about the run.
#[derive(Clone)]
pub struct RunSettings {
    pub sampling_json: String,
    pub model_config_json: String,
    pub tokenizer_json: String,
    pub eos_id: u32,
    pub heartbeat_interval_ms: u64,
}

pub struct MembershipArgs {
    pub settings: RunSettings,
    pub heartbeat_timeout: Duration,
    /// Where joins and expiries are reported (the coordinator).
    pub parent: DerivedActorRef<MembershipEvent>,
    pub start_version: u64,
    /// Live workers at most (`runtime.max_workers`): a flood of joins cannot grow the learner's
    /// state without bound.
    pub max_workers: usize,
    /// The id of the first worker to join (see [`first_worker_id`]).
    pub first_worker_id: u64,
}

/// The first worker id a learner hands out. A new run numbers its workers from 1. A resumed
/// learner starts from a base drawn from the clock (a multiple of 2^20, at least 2^20), so that a
/// worker of an earlier learner, still sending its old id, is told to join again instead of being
/// taken for a worker that joined this one.
pub fn first_worker_id(resumed: bool) -> u64 {
    if !resumed {
        return 1;
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    (u64::from(nanos) + 1) << 20
}

pub struct MembershipState {
    settings: RunSettings,
    heartbeat_timeout: Duration,
    parent: DerivedActorRef<MembershipEvent>,
    /// Worker id -> (name, last heard from).
    workers: BTreeMap<u64, (String, Instant)>,
    /// Worker id -> the address its join came from.
    addresses: BTreeMap<u64, String>,
    next_worker_id: u64,
    max_workers: usize,
    version: u64,
    done: bool,
}

pub struct Membership;

impl Actor for Membership {
    type Msg = MembershipMsg;
    type State = MembershipState;
    type Arguments = MembershipArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(Duration::from_millis(200), || MembershipMsg::Tick);
        Ok(MembershipState {
            settings: args.settings,
            heartbeat_timeout: args.heartbeat_timeout,
            parent: args.parent,
            workers: BTreeMap::new(),
            addresses: BTreeMap::new(),
            next_worker_id: args.first_worker_id,
            max_workers: args.max_workers,
            version: args.start_version,
            done: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        crate::logged("membership", handle_message(myself, message, state).await)
    }
}

async fn handle_message(
    _myself: ActorRef<MembershipMsg>,
    message: MembershipMsg,
    state: &mut MembershipState,
) -> Result<(), ActorProcessingErr> {
    match message {
        MembershipMsg::Snapshot { reply } => {
            let now = Instant::now();
            let live = state
                .workers
                .iter()
                .map(|(&id, (_, seen))| {
                    let address = state.addresses.get(&id).cloned().unwrap_or_default();
                    (id, address, now.duration_since(*seen).as_secs_f64())
                })
                .collect();
            let _ = reply.send(live);
        }
        MembershipMsg::Join { name, address, reply } => {
            if state.workers.len() >= state.max_workers {
                tracing::debug!(worker = %name, "join refused: runtime.max_workers reached");
                let _ = reply.send(Err(Status::resource_exhausted(format!(
                    "the learner has {} workers, its limit (runtime.max_workers); join refused",
                    state.workers.len()
                ))));
                return Ok(());
            }
            let worker_id = state.next_worker_id;
            state.next_worker_id += 1;
            // The coordinator must know the worker before the worker asks it for a lease.
            let known = state
                .parent
                .call(
                    |reply| MembershipEvent::WorkerJoined { worker_id, name: name.clone(), reply },
                    Some(Duration::from_secs(10)),
                )
                .await?;
            if !matches!(known, CallResult::Success(())) {
                return Err("the coordinator did not register the worker".into());
            }
            tracing::info!(worker_id, worker = %name, "worker joined");
            state.workers.insert(worker_id, (name, Instant::now()));
            state.addresses.insert(worker_id, address);
            let settings = &state.settings;
            let _ = reply.send(Ok(pb::JoinResponse {
                worker_id,
                sampling_json: settings.sampling_json.clone(),
                eos_id: settings.eos_id,
                heartbeat_interval_ms: settings.heartbeat_interval_ms,
                model_config_json: settings.model_config_json.clone(),
                tokenizer_json: settings.tokenizer_json.clone(),
            }));
        }
        MembershipMsg::Heartbeat { worker_id, reply } => {
            let result = match state.workers.get_mut(&worker_id) {
                Some((_, last_seen)) => {
                    *last_seen = Instant::now();
                    Ok(pb::HeartbeatResponse { policy_version: state.version, done: state.done })
                }
                None => Err(Status::not_found(format!("worker {worker_id} is unknown or expired; join again"))),
            };
            let _ = reply.send(result);
        }
        MembershipMsg::Progress { version, done } => {
            state.version = version;
            state.done = done;
        }
        MembershipMsg::Tick => {
            let now = Instant::now();
            let silent: Vec<u64> = state
                .workers
                .iter()
                .filter(|(_, (_, seen))| now.duration_since(*seen) > state.heartbeat_timeout)
                .map(|(&id, _)| id)
                .collect();
            for worker_id in silent {
                let (name, _) = state.workers.remove(&worker_id).expect("listed above");
                state.addresses.remove(&worker_id);
                tracing::warn!(worker_id, worker = %name, "worker expired (no heartbeat)");
                state.parent.send_message(MembershipEvent::WorkerExpired { worker_id })?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    /// Stands in for the coordinator: registers every joining worker and reports each event.
    struct FakeParent;

    impl Actor for FakeParent {
        type Msg = MembershipEvent;
        type State = mpsc::UnboundedSender<String>;
        type Arguments = mpsc::UnboundedSender<String>;

        async fn pre_start(
            &self,
            _myself: ActorRef<Self::Msg>,
            events: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(events)
        }

        async fn handle(
            &self,
            _myself: ActorRef<Self::Msg>,
            event: Self::Msg,
            events: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            match event {
                MembershipEvent::WorkerJoined { worker_id, name, reply } => {
                    events.send(format!("joined {worker_id} {name}"))?;
                    let _ = reply.send(());
                }
                MembershipEvent::WorkerExpired { worker_id } => events.send(format!("expired {worker_id}"))?,
            }
            Ok(())
        }
    }

    async fn ask<T: Send + 'static>(
        membership: &ActorRef<MembershipMsg>,
        message: impl FnOnce(RpcReplyPort<T>) -> MembershipMsg,
    ) -> T {
        match membership.call(message, Some(Duration::from_secs(5))).await.unwrap() {
            CallResult::Success(value) => value,
            _ => panic!("membership did not answer"),
        }
    }

    async fn next_event(events: &mut mpsc::UnboundedReceiver<String>) -> String {
        tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("an event within 5 s").unwrap()
    }

    #[tokio::test]
    async fn workers_join_through_the_parent_and_expire_when_silent() {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (parent, parent_handle) = Actor::spawn(None, FakeParent, events_tx).await.unwrap();
        let settings = RunSettings {
            sampling_json: "{}".into(),
            model_config_json: "{}".into(),
            tokenizer_json: String::new(),
            eos_id: 7,
            heartbeat_interval_ms: 20,
        };
        let args = MembershipArgs {
            settings,
            heartbeat_timeout: Duration::from_millis(500),
            parent: parent.get_derived(),
            start_version: 3,
            max_workers: 1,
            first_worker_id: 1,
        };
        let (membership, membership_handle) = Actor::spawn(None, Membership, args).await.unwrap();

        let joined = ask(&membership, |reply| MembershipMsg::Join { name: "w".into(), address: String::new(), reply })
            .await
            .unwrap();
        assert_eq!((joined.worker_id, joined.eos_id), (1, 7));
        // The parent heard of the worker before the worker heard its id.
        assert_eq!(events.try_recv().unwrap(), "joined 1 w");
        // At max_workers (1 here) a join is refused and changes nothing.
        let refused = ask(&membership, |reply| MembershipMsg::Join { name: "x".into(), address: String::new(), reply })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(events.try_recv().is_err());

        let beat = ask(&membership, |reply| MembershipMsg::Heartbeat { worker_id: 1, reply }).await.unwrap();
        assert_eq!((beat.policy_version, beat.done), (3, false));
        membership.send_message(MembershipMsg::Progress { version: 4, done: true }).unwrap();
        let beat = ask(&membership, |reply| MembershipMsg::Heartbeat { worker_id: 1, reply }).await.unwrap();
        assert_eq!((beat.policy_version, beat.done), (4, true));

        // Silent past the timeout: the parent is told, and the worker must join again.
        assert_eq!(next_event(&mut events).await, "expired 1");
        let status = ask(&membership, |reply| MembershipMsg::Heartbeat { worker_id: 1, reply }).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
        let rejoined =
            ask(&membership, |reply| MembershipMsg::Join { name: "w".into(), address: String::new(), reply })
                .await
                .unwrap();
        assert_eq!(rejoined.worker_id, 2);
        assert_eq!(next_event(&mut events).await, "joined 2 w");

        membership.stop(None);
        parent.stop(None);
        membership_handle.await.unwrap();
        parent_handle.await.unwrap();
    }

    #[test]
    fn a_resumed_learner_numbers_its_workers_apart_from_any_earlier_learner() {
        assert_eq!(first_worker_id(false), 1);
        let base = first_worker_id(true);
        assert!(base >= 1 << 20 && base.is_multiple_of(1 << 20), "{base}");
    }
}
