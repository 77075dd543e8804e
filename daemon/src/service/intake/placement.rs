//! Where an admitted request goes: the routing decision turned into a place (the local
//! queue, a cloud route holding one of the in-flight permits, or a refusal), and the start
//! of a journaled request there.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::Intake;
use crate::router::Route;
use crate::service::journal::RequestKey;
use crate::service::queue::{Job, Refused};
use crate::service::route;
use crate::service::schema::{ErrorCode, Request, RequestError, RouteHint, Served, ServedRoute};
use crate::service::spill::{self, CloudTarget, Spill};
use crate::service::stats::Outcome;
use crate::service::upstream::upstream_payload;

/// Where an admitted request goes.
pub(super) enum Placement {
    Local(Served),
    Cloud(Served, CloudTarget, tokio::sync::OwnedSemaphorePermit),
    Refuse(RequestError),
}

impl Intake {
    /// Decides where a request of `prompt_tokens` goes and claims what it needs there (a
    /// cloud permit); `recovered` requests were accepted before a restart, so the queue's
    /// depth does not refuse them.
    pub(super) fn place(
        &self,
        req: &Request,
        prompt_tokens: usize,
        payload: &[u8],
        expiry: Option<Duration>,
        recovered: bool,
    ) -> Placement {
        let queued = self.stats.queued.load(Ordering::SeqCst);
        let decision = self.routing.decide(req, prompt_tokens, expiry, queued);
        tracing::info!(
            id = %req.id,
            route = decision.route.as_str(),
            rule = decision.rule.number(),
            "{}",
            decision.reason
        );
        let local = |reason: String| {
            if !recovered && self.queue.is_full() {
                return Placement::Refuse(RequestError::new(
                    ErrorCode::Busy,
                    format!(
                        "the queue is full ({} waiting); try again shortly",
                        self.stats.queued.load(Ordering::SeqCst)
                    ),
                ));
            }
            Placement::Local(Served {
                route: ServedRoute::Local,
                reason,
            })
        };
        match (decision.route, ServedRoute::of(decision.route)) {
            (Route::Reject(code), _) => {
                Placement::Refuse(RequestError::new(route::reject_code(code), decision.reason))
            }
            (_, None | Some(ServedRoute::Local)) => local(decision.reason),
            (_, Some(route)) => {
                let served = Served {
                    route,
                    reason: decision.reason,
                };
                let to = if route == ServedRoute::CloudHttps {
                    self.routing.cloud().cloned().map(CloudTarget::Https)
                } else {
                    self.routing
                        .upstream()
                        .cloned()
                        .zip(upstream_payload(payload))
                        .map(|(up, p)| CloudTarget::Mqtt(up, p))
                };
                let Some(to) = to else {
                    // The policy only picks configured routes.
                    return Placement::Refuse(RequestError::new(
                        ErrorCode::Internal,
                        "no such cloud route",
                    ));
                };
                match Arc::clone(&self.cloud_permits).try_acquire_owned() {
                    Ok(permit) => Placement::Cloud(served, to, permit),
                    Err(_) if req.route == RouteHint::Cloud => {
                        Placement::Refuse(RequestError::new(
                            ErrorCode::Busy,
                            format!(
                                "{} requests are on their way to the cloud already; try again \
                                 shortly",
                                self.config.max_cloud_inflight
                            ),
                        ))
                    }
                    Err(_) => local(format!(
                        "{}, but {} requests are on their way to the cloud already: served here",
                        served.reason, self.config.max_cloud_inflight
                    )),
                }
            }
        }
    }

    /// Starts a journaled request where [`Intake::place`] put it: the local queue, or a
    /// cloud route when `cloud` says so.
    pub(super) async fn start_placed(
        &self,
        job: Job,
        cloud: Option<(CloudTarget, tokio::sync::OwnedSemaphorePermit)>,
    ) {
        let Some(out) = self.reply_sender() else {
            return;
        };
        match cloud {
            None => {
                let admitted = if self.is_resumed(&job.key) {
                    self.queue.readmit(job)
                } else {
                    self.queue.admit(job)
                };
                let (code, message, job) = match admitted {
                    Ok(()) => return,
                    Err(Refused::Full(job)) => {
                        (ErrorCode::Busy, "the queue is full; try again shortly", job)
                    }
                    Err(Refused::Closed(job)) => (
                        ErrorCode::ShuttingDown,
                        "the device is shutting down; send the request again later",
                        job,
                    ),
                };
                self.stats.count(None, Outcome::Failed(code));
                let err = RequestError::new(code, message);
                let _ = out.send(job.error_reply(&err)).await;
            }
            Some((to, permit)) => {
                let spill = Spill {
                    job,
                    out,
                    stats: Arc::clone(&self.stats),
                    queue: Arc::clone(&self.queue),
                    cancel: self.cancel_spills.subscribe(),
                    permit,
                };
                let mut spills = self.spills.lock().unwrap_or_else(PoisonError::into_inner);
                // Reap the finished ones: the set holds only what runs.
                while spills.try_join_next().is_some() {}
                spills.spawn(spill::run(spill, to));
            }
        }
    }

    fn is_resumed(&self, key: &RequestKey) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .is_some_and(|f| f.resumed)
    }
}
