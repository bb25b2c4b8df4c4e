//! The learner's gRPC service: each RPC becomes one message to the coordinator actor.

use std::pin::Pin;
use std::time::Duration;

use ractor::RpcReplyPort;
use ractor::rpc::CallResult;
use rlhf_proto::v1 as pb;
use rlhf_proto::v1::learner_server::Learner;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use ractor::ActorRef;

use crate::coordinator::{CoordinatorMsg, CoordinatorRef};
use crate::membership::MembershipMsg;
use crate::publisher::PublisherMsg;

pub struct LearnerService {
    pub coordinator: CoordinatorRef,
    pub membership: ActorRef<MembershipMsg>,
    pub publisher: ActorRef<PublisherMsg>,
}

/// Sends a message built around a reply port to an actor and awaits the answer.
async fn ask<M: ractor::Message, T: Send + 'static>(
    actor: &ActorRef<M>,
    message: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Result<T, Status> {
    match actor.call(message, Some(Duration::from_secs(30))).await {
        Ok(CallResult::Success(value)) => Ok(value),
        Ok(_) => Err(Status::unavailable("the learner did not answer in time")),
        Err(_) => Err(Status::unavailable("the learner is shutting down")),
    }
}

#[tonic::async_trait]
impl Learner for LearnerService {
    async fn join(&self, request: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let address = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let name = request.into_inner().name;
        Ok(Response::new(ask(&self.membership, |reply| MembershipMsg::Join { name, address, reply }).await??))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let worker_id = request.into_inner().worker_id;
        Ok(Response::new(ask(&self.membership, |reply| MembershipMsg::Heartbeat { worker_id, reply }).await??))
    }

    async fn lease_prompts(
        &self,
        request: Request<pb::LeasePromptsRequest>,
    ) -> Result<Response<pb::LeasePromptsResponse>, Status> {
        let pb::LeasePromptsRequest { worker_id, policy_version: held_version } = request.into_inner();
        Ok(Response::new(
            ask(&self.coordinator, |reply| CoordinatorMsg::Lease { worker_id, held_version, reply }).await??,
        ))
    }

    async fn submit_rollouts(
        &self,
        request: Request<pb::SubmitRolloutsRequest>,
    ) -> Result<Response<pb::SubmitRolloutsResponse>, Status> {
        let request = request.into_inner();
        let score_seconds = request.score_seconds;
        let accepted =
            ask(&self.coordinator, |reply| CoordinatorMsg::Submit { request, score_seconds, reply }).await??;
        Ok(Response::new(pb::SubmitRolloutsResponse { accepted }))
    }

    async fn return_lease(
        &self,
        request: Request<pb::ReturnLeaseRequest>,
    ) -> Result<Response<pb::ReturnLeaseResponse>, Status> {
        let pb::ReturnLeaseRequest { worker_id, lease_id } = request.into_inner();
        ask(&self.coordinator, |reply| CoordinatorMsg::Return { worker_id, lease_id, reply }).await??;
        Ok(Response::new(pb::ReturnLeaseResponse {}))
    }

    type GetWeightsStream = Pin<Box<dyn Stream<Item = Result<pb::WeightsChunk, Status>> + Send>>;

    async fn get_weights(
        &self,
        request: Request<pb::GetWeightsRequest>,
    ) -> Result<Response<Self::GetWeightsStream>, Status> {
        let version = request.into_inner().policy_version;
        let snapshot = ask(&self.publisher, |reply| PublisherMsg::Get { version, reply }).await??;
        // Every worker streams from the same shared buffer; chunks are cut as they are sent.
        Ok(Response::new(Box::pin(tokio_stream::iter(snapshot.chunks().map(Ok)))))
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let mut status = ask(&self.coordinator, |reply| CoordinatorMsg::Status { reply }).await?;
        let live = ask(&self.membership, |reply| MembershipMsg::Snapshot { reply }).await?;
        for worker in &mut status.workers {
            if let Some((_, address, seconds)) = live.iter().find(|(id, _, _)| *id == worker.worker_id) {
                worker.address = address.clone();
                worker.seconds_since_heartbeat = *seconds;
            }
        }
        Ok(Response::new(status))
    }
}
