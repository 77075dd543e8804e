//! Where each request goes: the glue between the service and the routing policy.
//!
//! [`Routing`] owns the resource [`Monitor`] (sampling temperature and memory on its own
//! thread), the [`Policy`] state machine (behind a mutex: the dispatcher decides, the
//! engine thread reports measured rates and asks whether it may start work) and the
//! HTTPS [`CloudClient`] when a cloud route is configured. It also keeps the one number
//! the policy needs that only the service knows: the tokens the work admitted to the local
//! engine and not yet finished is expected to generate, for the queue-wait estimate.
//!
//! It counts the decisions that send a request to a cloud route, by their stable reason
//! ([`Routing::spill_decisions`]: telemetry's `routing.spills` and the metrics' spill
//! counter).
//!
//! It also holds the model's tokenizer, shared with the engine: a request is routed on its
//! exact prompt token count, the chat template encoded as the engine will run it
//! ([`Routing::prepare`]), and the ids go with the job so the engine does not encode again.
//!
//! The policy's generation-rate and completion-length averages are the only ones the
//! daemon keeps: routing uses them and telemetry reports them. The engine thread feeds
//! both after every finished request ([`Routing::observe_rate`],
//! [`Routing::observe_completion`]); [`Routing::generation_rate`] and
//! [`Routing::completion_tokens`] read them for persisting, and the `restore_*` methods put
//! them back after a restart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;

use crate::cloud::secrets::SecretError;
use crate::cloud::{
    CloudClient, CloudConfigError, CloudMessage, CloudRequest, CloudToolCall, load_token,
    new_call_id,
};
use crate::config::Validated;
use crate::constrain::{Constraint, Grammars, OutputRules};
use crate::engine::Engine;
use crate::monitor::{Monitor, MonitorError, Sampler};
use crate::rng::SplitMix64;
use crate::router::{
    COMPLETION_PRIOR_TOKENS, CloudHealth, CloudRoute, Conditions, Decision, Policy, PolicyConfig,
    PolicyError, RejectCode, RequestFacts, RouteHealth, Thermal, ThermalState,
};
use crate::tokenizer::chat::Message;
use crate::tokenizer::{ChatPrompt, Tokenizer};

use super::schema::{ErrorCode, Request, RequestError};
use super::upstream::Upstream;

#[derive(Debug, thiserror::Error)]
pub enum RoutingSetupError {
    #[error("resource monitor: {0}")]
    Monitor(#[from] MonitorError),
    #[error("routing policy: {0}")]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Cloud(#[from] CloudConfigError),
    #[error("cloud token: {0}")]
    Token(String),
    #[error("cloud broker: {0}")]
    Upstream(#[from] super::mqtt::MqttSetupError),
    #[error("the tool-call grammar cannot be set up for this vocabulary: {0}")]
    Grammar(String),
    #[error("the model has no tokenizer: requests cannot be counted or run")]
    NoTokenizer,
}

/// The service's routing state; see the module docs.
pub struct Routing {
    policy: Mutex<Policy>,
    monitor: Monitor,
    cloud: Option<Arc<CloudClient>>,
    upstream: Option<Arc<Upstream>>,
    /// Tokens every request admitted to the local engine and not yet finished is expected
    /// to generate ([`Policy::expected_completion`] when it was admitted).
    local_tokens: AtomicU64,
    /// The board profile's name, for telemetry.
    board: String,
    /// The engine's tokenizer, shared.
    tokenizer: Arc<Tokenizer>,
    /// Compiles requests' grammars over the tokenizer's vocabulary.
    grammars: Grammars,
    /// Cloud decisions so far, by [`Decision::spill_label`].
    spills: Mutex<BTreeMap<&'static str, u64>>,
}

impl std::fmt::Debug for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routing")
            .field("cloud", &self.cloud.is_some())
            .finish_non_exhaustive()
    }
}

impl Routing {
    /// Starts the monitor and builds the policy from the configuration and the loaded
    /// model's memory plan.
    pub fn new(v: &Validated, engine: &Engine) -> Result<Routing, RoutingSetupError> {
        let r = &v.config.router;
        let sampler = Sampler::new(r.fs_root.clone(), v.board.profile.thermal.zones.clone());
        let monitor = Monitor::start(sampler, Duration::from_millis(r.sample_ms))?;
        let tokenizer = engine
            .shared_tokenizer()
            .ok_or(RoutingSetupError::NoTokenizer)?;
        let plan = engine.plan();
        let threads = engine.compute().pool.capacity();
        let policy = Policy::new(PolicyConfig {
            thermal: v.thermal,
            local_context: engine.context(),
            kv_bytes_per_token: plan.kv_per_token.max(1),
            memory_margin: v.memory_margin,
            queue_capacity: v.config.service.queue,
            default_deadline: Duration::from_secs(r.default_deadline_secs),
            hard_cooldown: Duration::from_secs(r.hard_cooldown_secs),
            threads,
            // Above the soft limit half the cores compute (the engine thread applies it
            // before each request): less heat, and the memory-bound decode loses less than
            // half its speed.
            hot_threads: PolicyConfig::half_threads(threads),
            cloud_routes: v.cloud_routes.clone(),
            rate_prior: r.rate_prior,
            rate_alpha: 0.3,
            completion_prior: COMPLETION_PRIOR_TOKENS,
            completion_alpha: 0.3,
        })?;
        let cloud = if v.cloud_routes.contains(&CloudRoute::Https) {
            let sources = v.config.cloud.token_sources();
            let token = match load_token(&sources) {
                Ok(t) => {
                    tracing::info!("cloud API token from {}", t.source);
                    Some(t.token)
                }
                // A router on the LAN (a LiteLLM proxy, llama.cpp's server) may need none.
                Err(e @ SecretError::NotFound { .. }) => {
                    tracing::warn!("{e}: cloud requests are sent without one");
                    None
                }
                Err(e) => return Err(RoutingSetupError::Token(e.to_string())),
            };
            Some(Arc::new(CloudClient::new(v.config.cloud.clone(), token)?))
        } else {
            None
        };
        tracing::info!(
            "routing: board profile {}, soft {:.0}/{:.0} °C, hard {:.0}/{:.0} °C (enter/exit), \
             cloud routes: {}",
            v.board.profile.name,
            v.thermal.soft_enter_c,
            v.thermal.soft_exit_c,
            v.thermal.hard_enter_c,
            v.thermal.hard_exit_c,
            if v.cloud_routes.is_empty() {
                "none".to_string()
            } else {
                v.cloud_routes
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        let upstream = match &v.upstream {
            Some(addr) => Some(Arc::new(Upstream::start(v, addr)?)),
            None => None,
        };
        Ok(Routing {
            policy: Mutex::new(policy),
            monitor,
            cloud,
            upstream,
            local_tokens: AtomicU64::new(0),
            board: v.board.profile.name.clone(),
            grammars: Grammars::new(Arc::clone(&tokenizer))
                .map_err(|e| RoutingSetupError::Grammar(e.to_string()))?,
            tokenizer,
            spills: Mutex::new(BTreeMap::new()),
        })
    }

    fn policy(&self) -> std::sync::MutexGuard<'_, Policy> {
        self.policy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The prompt's ids as the engine runs them (the chat template, encoded by the model's
    /// tokenizer) and the answer's grammar, compiled. CPU work in proportion to the prompt
    /// and the schemas: call it off the async runtime.
    pub fn prepare(
        &self,
        chat: &ChatPrompt,
        output: &OutputRules,
    ) -> Result<(Vec<u32>, Constraint), RequestError> {
        let invalid = |m: String| RequestError::new(ErrorCode::InvalidRequest, m);
        let prompt = chat
            .encode(&self.tokenizer)
            .map_err(|e| invalid(e.to_string()))?;
        let constraint = self
            .grammars
            .compile(&chat.tools, output)
            .map_err(|e| invalid(e.to_string()))?;
        Ok((prompt, constraint))
    }

    /// Decides where `req`, of `prompt_tokens` tokens ([`Routing::prepare`]), goes.
    /// `deadline_left` is the time to its MQTT message expiry; `queued` the requests
    /// waiting for the engine.
    pub fn decide(
        &self,
        req: &Request,
        prompt_tokens: usize,
        deadline_left: Option<Duration>,
        queued: usize,
    ) -> Decision {
        let snap = self.monitor.latest();
        let now = Conditions {
            temperature_c: snap.temperature_c,
            mem_headroom: snap.memory_headroom_bytes(),
            queued_requests: queued,
            queued_tokens: self.local_tokens.load(Ordering::Relaxed),
            cloud: self.cloud_health(),
        };
        let facts = RequestFacts {
            prompt_tokens,
            max_tokens: req.max_tokens,
            route: req.route,
            privacy: req.privacy,
            deadline: deadline_left,
        };
        let decision = self.policy().decide(&now, &facts);
        if let Some(label) = decision.spill_label() {
            *self
                .spills
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(label)
                .or_default() += 1;
        }
        decision
    }

    /// Decisions that sent a request to a cloud route so far, by
    /// [`Decision::spill_label`] (`route_cloud`, or the spill cause). Counted at the
    /// decision: a request whose cloud permits were all taken is served here all the same.
    pub fn spill_decisions(&self) -> Vec<(&'static str, u64)> {
        self.spills
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// The thermal state, as [`Routing::follow_readings`] keeps it.
    pub fn thermal_state(&self) -> ThermalState {
        self.policy().thermal().state()
    }

    /// Whether each cloud route can take a request now, and why not.
    fn cloud_health(&self) -> CloudHealth {
        let health = |availability: Option<Result<(), String>>| match availability {
            None => RouteHealth::Down("not configured".into()),
            Some(Ok(())) => RouteHealth::Up,
            Some(Err(reason)) => RouteHealth::Down(reason),
        };
        CloudHealth {
            https: health(self.cloud.as_ref().map(|c| c.availability())),
            mqtt: health(self.upstream.as_ref().map(|u| u.availability())),
        }
    }

    /// The cloud broker connection, when the MQTT route is configured.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        self.upstream.as_ref()
    }

    /// The HTTPS client, when that route is configured.
    pub fn cloud(&self) -> Option<&Arc<CloudClient>> {
        self.cloud.as_ref()
    }

    /// Records a request admitted to the local engine (for the queue-wait estimate: the
    /// tokens it is expected to generate); the returned number goes back to
    /// [`Routing::local_done`].
    pub fn local_admitted(&self, req: &Request) -> u64 {
        let tokens = self.policy().expected_completion(req.max_tokens);
        self.local_tokens.fetch_add(tokens, Ordering::Relaxed);
        tokens
    }

    /// A request admitted with [`Routing::local_admitted`] left the engine.
    pub fn local_done(&self, tokens: u64) {
        let _ = self
            .local_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(tokens))
            });
    }

    /// Reports a measured local generation rate.
    pub fn observe_rate(&self, tokens_per_s: f64) {
        if tokens_per_s.is_finite() && tokens_per_s > 0.0 {
            let _ = self.policy().observe_rate(tokens_per_s);
        }
    }

    /// Reports the completion tokens a local request generated (one that finished by a
    /// stop or by `max_tokens`; a cancelled one says nothing about answer lengths).
    pub fn observe_completion(&self, tokens: usize) {
        self.policy().observe_completion(tokens);
    }

    /// The measured generation rate (tokens/s), `None` while only the prior is known: the
    /// number to persist.
    pub fn generation_rate(&self) -> Option<f64> {
        self.policy().rate().measured()
    }

    /// Restores a rate persisted by a previous run; it counts as measured. A value that is
    /// not a positive finite number is ignored (with a warning: the journal is a file).
    pub fn restore_generation_rate(&self, tokens_per_s: f64) {
        if let Err(e) = self.policy().restore_rate(tokens_per_s) {
            tracing::warn!("not restoring the generation rate: {e}");
        }
    }

    /// The measured completion tokens per request, `None` while only the prior is known.
    pub fn completion_tokens(&self) -> Option<f64> {
        self.policy().completion().measured()
    }

    /// Restores a completion length persisted by a previous run; it counts as measured. A
    /// value below 1 or not finite is ignored with a warning.
    pub fn restore_completion_tokens(&self, tokens: f64) {
        if let Err(e) = self.policy().restore_completion(tokens) {
            tracing::warn!("not restoring the completion length: {e}");
        }
    }

    /// The thermal state when it holds new local work back (`Hard`: wait for the SoC to
    /// cool; its [`Thermal::reason`] says why), `None` when work may start. The state is
    /// kept current by [`Routing::follow_readings`].
    pub fn thermal_hold(&self) -> Option<Thermal> {
        let policy = self.policy();
        (policy.thermal().state() == ThermalState::Hard).then(|| policy.thermal().clone())
    }

    /// Feeds every temperature reading the monitor takes to the policy's thermal state
    /// machine, until the routing is gone. Without it the state machine would only see the
    /// readings that happen to coincide with a request, and hysteresis is about the board's
    /// whole course: a spike past the hard limit between two requests must still leave the
    /// board `Hard` until it cools below the hard exit threshold (and telemetry's
    /// `thermal_state` must say so meanwhile).
    pub async fn follow_readings(routing: std::sync::Weak<Routing>) {
        let Some(mut readings) = routing.upgrade().map(|r| r.monitor.subscribe()) else {
            return;
        };
        loop {
            let reading = readings.borrow_and_update().temperature_c;
            let Some(r) = routing.upgrade() else { return };
            r.policy().observe_temperature(reading);
            drop(r);
            // Ends when the monitor (owned by the routing) stops.
            if readings.changed().await.is_err() {
                return;
            }
        }
    }

    /// Threads local generation should use now (fewer above the soft limit), by the
    /// thermal state [`Routing::follow_readings`] keeps current.
    pub fn local_threads(&self) -> usize {
        self.policy().local_threads()
    }

    /// The thermal state and latest readings, for telemetry.
    pub fn telemetry(&self) -> serde_json::Value {
        let snap = self.monitor.latest();
        let policy = self.policy();
        // `null` for a route that is not configured, else "up" or why it is down.
        let status = |configured: bool, health: RouteHealth| {
            configured.then(|| match health {
                RouteHealth::Up => "up".to_string(),
                RouteHealth::Down(reason) => reason,
            })
        };
        let cloud = self.cloud_health();
        serde_json::json!({
            "board": self.board,
            "thermal_state": policy.thermal().state().as_str(),
            "throttled": snap.throttled(),
            "memory_headroom_bytes": snap.memory_headroom_bytes(),
            "generation_tokens_per_s_ewma": policy.rate().value(),
            "generation_rate_measured": policy.rate().measured().is_some(),
            "expected_completion_tokens": policy.completion().value(),
            "cloud_https": status(self.cloud.is_some(), cloud.https),
            "cloud_mqtt": status(self.upstream.is_some(), cloud.mqtt),
            "spills": serde_json::Value::Object(
                self.spill_decisions()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                    .collect()
            ),
        })
    }

    /// The latest readings, for telemetry.
    pub fn snapshot(&self) -> crate::monitor::Snapshot {
        self.monitor.latest()
    }
}

/// The OpenAI-style request for the cloud router: the conversation with its tool calls and
/// results, the declared tools and what the client asked of the answer's shape, as it
/// gave them.
///
/// OpenAI pairs a tool result with its call by id, which our clients may leave out (the
/// local chat format pairs them by order). A call without an id gets one made up (from the
/// request's seed, so a rerun sends the same), and a result without one takes the id of
/// the earliest call of the assistant turn before it not yet answered: the order the local
/// format assumes.
pub fn cloud_request(req: &Request) -> CloudRequest {
    let mut ids = SplitMix64::new(req.sampling.seed ^ PROMPT_CALL_IDS);
    // The ids of the last assistant turn's calls not yet answered, in order.
    let mut unanswered: std::collections::VecDeque<String> = Default::default();
    let messages = req
        .chat
        .messages
        .iter()
        .map(|m| match m {
            Message::System(t) => CloudMessage::new("system", t.clone()),
            Message::User(t) => CloudMessage::new("user", t.clone()),
            Message::Assistant {
                content,
                tool_calls,
            } => {
                let calls: Vec<CloudToolCall> = tool_calls
                    .iter()
                    .map(|c| {
                        let id = c.id.clone().unwrap_or_else(|| new_call_id(&mut ids));
                        let arguments = match &c.arguments {
                            // Text the client gave that is not JSON stays as it was.
                            Value::String(s) => s.clone(),
                            v => v.to_string(),
                        };
                        CloudToolCall::function(id, c.name.clone(), arguments)
                    })
                    .collect();
                unanswered = calls.iter().map(|c| c.id.clone()).collect();
                CloudMessage {
                    role: "assistant".into(),
                    // OpenAI's form of a turn made of calls alone.
                    content: (!content.is_empty() || calls.is_empty()).then(|| content.clone()),
                    tool_calls: calls,
                    tool_call_id: None,
                }
            }
            Message::Tool { content, call_id } => {
                let id = match call_id {
                    Some(id) => {
                        unanswered.retain(|u| u != id);
                        id.clone()
                    }
                    None => unanswered
                        .pop_front()
                        .unwrap_or_else(|| new_call_id(&mut ids)),
                };
                CloudMessage {
                    tool_call_id: Some(id),
                    ..CloudMessage::new("tool", content.clone())
                }
            }
        })
        .collect();
    let tools = req.chat.tools.clone();
    let with_tools = !tools.is_empty();
    CloudRequest {
        messages,
        max_tokens: u32::try_from(req.max_tokens).ok(),
        temperature: Some(req.sampling.temperature),
        top_p: Some(req.sampling.top_p),
        seed: Some(req.sampling.seed),
        stop: req.stop.clone(),
        tool_choice: with_tools.then(|| req.output.tool_choice_json()),
        parallel_tool_calls: with_tools.then_some(req.output.parallel_tool_calls),
        response_format: req.output.response_format_json(),
        tools,
    }
}

/// Sets apart the ids made up for the prompt's calls from other uses of the request's
/// seed.
const PROMPT_CALL_IDS: u64 = 0x7072_6f6d_7074_6964;

/// The reply code of a policy refusal.
pub fn reject_code(code: RejectCode) -> ErrorCode {
    match code {
        RejectCode::Expired => ErrorCode::Expired,
        RejectCode::InvalidRequest => ErrorCode::InvalidRequest,
        RejectCode::CloudUnavailable => ErrorCode::CloudUnavailable,
        RejectCode::ContextLength => ErrorCode::ContextLength,
        RejectCode::Busy => ErrorCode::Busy,
        RejectCode::DeadlineExceeded => ErrorCode::DeadlineExceeded,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::service::schema::{Limits, parse_request};

    fn request(v: Value) -> Request {
        let limits = Limits {
            max_request_bytes: 1 << 16,
            default_max_tokens: 64,
            max_tokens_limit: 1024,
        };
        parse_request(v.to_string().as_bytes(), &limits).unwrap()
    }

    fn weather() -> Value {
        json!({"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}})
    }

    /// The cloud gets the tools and the answer's rules as the client gave them, and the
    /// conversation's calls and results in OpenAI's form.
    #[test]
    fn the_cloud_request_carries_tools_calls_and_results() {
        let format = json!({"type": "json_schema",
                            "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": true}});
        let choice = json!({"type": "function", "function": {"name": "get_weather"}});
        let req = request(json!({
            "id": "t", "seed": 3,
            "messages": [
                {"role": "user", "content": "Paris and Oslo?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_P", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
                    {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
                ]},
                {"role": "tool", "content": "18 °C", "tool_call_id": "call_P"},
                {"role": "tool", "content": "9 °C"},
            ],
            "tools": [weather()],
            "tool_choice": choice,
            "parallel_tool_calls": false,
            "response_format": format,
        }));
        let c = cloud_request(&req);
        c.validate().unwrap();
        assert_eq!(c.tools, [weather()]);
        assert_eq!(c.tool_choice, Some(choice));
        assert_eq!(c.parallel_tool_calls, Some(false));
        assert_eq!(c.response_format, Some(format));
        let m = &c.messages;
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].role, "assistant");
        assert_eq!(m[1].content, None, "a turn of calls alone has null content");
        assert_eq!(m[1].tool_calls[0].id, "call_P");
        assert_eq!(m[1].tool_calls[0].kind, "function");
        assert_eq!(m[1].tool_calls[0].function.name, "get_weather");
        let args: Value = serde_json::from_str(&m[1].tool_calls[0].function.arguments).unwrap();
        assert_eq!(args, json!({"city": "Paris"}));
        assert_eq!(m[1].tool_calls[1].function.arguments, r#"{"city":"Oslo"}"#);
        // The call without an id got one, and the result without one answers it: the
        // first call not yet answered.
        let made_up = &m[1].tool_calls[1].id;
        assert_eq!(made_up.len(), crate::tokenizer::reply::CALL_ID_LEN);
        assert_eq!(m[2].tool_call_id.as_deref(), Some("call_P"));
        assert_eq!(m[3].tool_call_id.as_deref(), Some(made_up.as_str()));
        // The same request, the same made-up ids.
        assert_eq!(cloud_request(&req).messages, c.messages);
    }

    /// Without tools nothing about them is sent; `tool_choice` defaults as OpenAI's.
    #[test]
    fn the_cloud_request_sends_tool_fields_only_with_tools() {
        let plain = cloud_request(&request(json!({"id": "p", "prompt": "hi"})));
        assert!(plain.tools.is_empty());
        assert_eq!(plain.tool_choice, None);
        assert_eq!(plain.parallel_tool_calls, None);
        assert_eq!(plain.response_format, None);
        assert_eq!(plain.messages, [CloudMessage::new("user", "hi")]);
        let tools = cloud_request(&request(json!({"id": "p", "prompt": "hi",
                                                    "tools": [weather()]})));
        assert_eq!(tools.tool_choice, Some(json!("auto")));
        assert_eq!(tools.parallel_tool_calls, Some(true));
        let json_mode = cloud_request(&request(json!({"id": "p", "prompt": "hi",
            "response_format": {"type": "json_object"}})));
        assert_eq!(
            json_mode.response_format,
            Some(json!({"type": "json_object"}))
        );
    }
}
