//! Start-up recovery: finals recorded but not delivered are sent again; requests without a
//! final run again (`"resumed": true`) while their deadline allows, else are answered
//! `interrupted`.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::finals::key_target;
use super::{InFlight, Intake, Placement, Recovery, blocking, unix_ms};
use crate::service::journal::JournalError;
use crate::service::queue::Job;
use crate::service::schema::{ErrorCode, RequestError, parse_request, salvage_id};
use crate::service::sink::{Delivery, Outgoing, ReplyTarget};
use crate::service::stats::Outcome;

impl Intake {
    /// Answers what the journal holds from before a restart (see the module docs). Call it
    /// once, before the front ends take requests.
    pub async fn recover(&self) -> Result<Recovery, JournalError> {
        let mut report = Recovery::default();
        let undelivered = blocking(&self.journal, |j| j.undelivered()).await?;
        for u in undelivered {
            report.resent += 1;
            let target = key_target(&u.key, &u.client);
            self.send(Outgoing {
                target,
                payload: u.final_payload,
                delivery: Delivery::Recorded { key: u.key },
            })
            .await;
        }
        let pending = blocking(&self.journal, |j| j.pending()).await?;
        let now_ms = unix_ms();
        for a in pending {
            let target = key_target(&a.key, &a.client);
            let id = salvage_id(&a.payload).unwrap_or_else(|| a.key.id.clone());
            let received = Instant::now();
            let cancel = Arc::new(AtomicBool::new(false));
            self.in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    a.key.clone(),
                    InFlight {
                        received,
                        resumed: true,
                        target: target.clone(),
                        also: Vec::new(),
                        cancel: Arc::clone(&cancel),
                    },
                );
            let left = a
                .deadline_unix_ms
                .map(|d| Duration::from_millis(d.saturating_sub(now_ms)));
            let answer = |code: ErrorCode, message: String| {
                Outgoing::journaled_error(&a.key, &id, &target, &RequestError::new(code, message))
            };
            // An HTTP request without an idempotency key waited on a connection the restart
            // closed: nobody can ask for its answer again, so it is not run again.
            let orphan = ReplyTarget::is_connection_bound(&a.key.reply_to);
            if orphan {
                report.interrupted += 1;
                self.stats
                    .count(None, Outcome::Failed(ErrorCode::Interrupted));
                self.send(answer(
                    ErrorCode::Interrupted,
                    "the device restarted while the request was in hand, and its HTTP client's \
                     connection closed with it"
                        .into(),
                ))
                .await;
                continue;
            }
            if left.is_some_and(|l| l.is_zero()) {
                report.interrupted += 1;
                self.stats
                    .count(None, Outcome::Failed(ErrorCode::Interrupted));
                let away = Duration::from_millis(now_ms.saturating_sub(a.received_unix_ms));
                self.send(answer(
                    ErrorCode::Interrupted,
                    format!(
                        "the device restarted while the request was in hand, and its deadline \
                         passed before it could run again (received {} s ago)",
                        away.as_secs()
                    ),
                ))
                .await;
                continue;
            }
            let mut req = match parse_request(&a.payload, &self.config.limits) {
                Ok(r) => r,
                Err(err) => {
                    // The limits changed across the restart.
                    self.send(Outgoing::journaled_error(&a.key, &id, &target, &err))
                        .await;
                    continue;
                }
            };
            req.sampling.seed = a.seed;
            // Chunks from the interrupted run may have gone out: the re-run answers with
            // its final only, whose text is whole.
            req.stream = false;
            let (prompt, constraint) = match self.prepare(&req).await {
                Ok(prepared) => prepared,
                Err(err) => {
                    self.send(Outgoing::journaled_error(&a.key, &id, &target, &err))
                        .await;
                    continue;
                }
            };
            report.resumed += 1;
            let (served, cloud) = match self.place(&req, prompt.len(), &a.payload, left, true) {
                Placement::Refuse(err) => {
                    self.send(Outgoing::journaled_error(&a.key, &id, &target, &err))
                        .await;
                    continue;
                }
                Placement::Local(mut served) => {
                    served.reason = format!("resumed after a restart; {}", served.reason);
                    (served, None)
                }
                Placement::Cloud(served, to, permit) => (served, Some((to, permit))),
            };
            let job = Job {
                request: req,
                prompt,
                constraint,
                key: a.key,
                target,
                client: a.client,
                received,
                deadline: left.map(|l| received + l),
                served,
                tokens: 0,
                cancel,
            };
            self.start_placed(job, cloud).await;
        }
        Ok(report)
    }
}
