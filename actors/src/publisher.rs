//! The weight publisher actor: holds the newest published weights and hands every worker the same
//! shared buffer.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tonic::Status;

use crate::weights::WeightSnapshot;

pub enum PublisherMsg {
    Publish(WeightSnapshot),
    Get { version: u64, reply: RpcReplyPort<Result<WeightSnapshot, Status>> },
}

pub struct Publisher;

impl Actor for Publisher {
    type Msg = PublisherMsg;
    type State = WeightSnapshot;
    type Arguments = WeightSnapshot;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        first: WeightSnapshot,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(first)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        current: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PublisherMsg::Publish(snapshot) => *current = snapshot,
            PublisherMsg::Get { version, reply } => {
                let result = if version == current.version {
                    Ok(current.clone())
                } else {
                    Err(Status::failed_precondition(format!(
                        "policy version {version} is not available; the current version is {}",
                        current.version
                    )))
                };
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}
