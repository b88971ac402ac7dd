//! The `trace` tower layer. On every request: reads the caller's context
//! (W3C, else B3), picks this hop's span id, and writes `traceparent`
//! (and B3 in the caller's style) into the request passed on, so the layers
//! below (access log, exemplars) and the next hop see this span. When the
//! span is sampled it is recorded: a SERVER span inbound, a CLIENT span
//! outbound, ended at the response head with the status and the Weft
//! error cause.
//!
//! With tracing off the sidecar records nothing and is invisible in the
//! trace: a caller's context passes through unchanged (B3 gains a
//! `traceparent` with the same ids), and a request without one starts a
//! trace (new ids, not sampled) so every hop can still log a trace id.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr as _;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use http::{Method, Version};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use tower::{Layer, Service};

use super::Tracer;
use super::context::{self, Current, TRACESTATE};
use crate::error::{ATTEMPTS_HEADER, ERROR_HEADER, ProxyError};
use crate::proxy::{ProxyRequest, ProxyResponse};

#[derive(Clone)]
pub struct TraceLayer {
    tracer: Tracer,
    kind: SpanKind,
}

impl TraceLayer {
    /// Inbound: SERVER spans, child of the calling sidecar's CLIENT span.
    pub fn inbound(tracer: Tracer) -> Self {
        Self {
            tracer,
            kind: SpanKind::Server,
        }
    }

    /// Outbound: CLIENT spans, child of the app's incoming request (the
    /// headers it forwarded). Placed after `split`, so route and
    /// destination are known.
    pub fn outbound(tracer: Tracer) -> Self {
        Self {
            tracer,
            kind: SpanKind::Client,
        }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Trace {
            tracer: self.tracer.clone(),
            kind: self.kind.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Trace<S> {
    tracer: Tracer,
    kind: SpanKind,
    inner: S,
}

impl<S> Service<ProxyRequest> for Trace<S>
where
    S: Service<ProxyRequest, Response = ProxyResponse, Error = ProxyError>,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Traced<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: ProxyRequest) -> Self::Future {
        // A plain CONNECT is an opaque tunnel, not an HTTP exchange.
        let span = if req.http.method() == Method::CONNECT {
            None
        } else {
            self.start(&mut req)
        };
        Traced {
            inner: self.inner.call(req),
            span,
        }
    }
}

impl<S> Trace<S> {
    /// Propagates the context; returns the span to record, if sampled.
    fn start(&self, req: &mut ProxyRequest) -> Option<SpanStart> {
        let headers = req.http.headers_mut();
        let (parent, style) = context::extract(headers);
        let inner = self.tracer.inner.as_ref();
        let Some(inner) = inner else {
            match parent {
                Some(p) if p.w3c => {}
                Some(p) => {
                    headers.insert(
                        context::TRACEPARENT,
                        context::traceparent(&Current {
                            trace_id: p.trace_id,
                            span_id: p.span_id,
                            parent_id: None,
                            sampled: p.sampled.unwrap_or(false),
                            short_b3_trace_id: p.short_b3_trace_id,
                        }),
                    );
                    headers.remove(TRACESTATE);
                }
                None => {
                    let new = Current {
                        trace_id: context::new_trace_id(),
                        span_id: context::new_span_id(),
                        parent_id: None,
                        sampled: false,
                        short_b3_trace_id: false,
                    };
                    headers.insert(context::TRACEPARENT, context::traceparent(&new));
                    headers.remove(TRACESTATE);
                }
            }
            return None;
        };
        let trace_id = parent.map_or_else(context::new_trace_id, |p| p.trace_id);
        let current = Current {
            trace_id,
            span_id: context::new_span_id(),
            parent_id: parent.map(|p| p.span_id),
            sampled: inner
                .sampler
                .sample(parent.and_then(|p| p.sampled), trace_id),
            short_b3_trace_id: parent.is_some_and(|p| p.short_b3_trace_id),
        };
        let w3c_parent = parent.is_some_and(|p| p.w3c);
        if !w3c_parent {
            // tracestate belongs to a traceparent; without one it is void.
            headers.remove(TRACESTATE);
        }
        context::inject(headers, &current, style);
        if !current.sampled {
            return None;
        }
        let tracestate = w3c_parent
            .then(|| headers.get(TRACESTATE))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| TraceState::from_str(v).ok())
            .unwrap_or_default();
        Some(SpanStart {
            tracer: self.tracer.clone(),
            kind: self.kind.clone(),
            current,
            parent_is_remote: parent.is_some(),
            tracestate,
            name: span_name(req.http.method(), self.route_name(req)),
            attributes: self.request_attributes(req),
            start_time: SystemTime::now(),
            started: Instant::now(),
        })
    }

    fn route_name<'r>(&self, req: &'r ProxyRequest) -> Option<&'r str> {
        req.ctx
            .route
            .as_ref()
            .map(|r| r.route().name.as_str())
            .filter(|name| !name.is_empty())
    }

    /// OpenTelemetry HTTP semantic conventions, plus who the peer is.
    fn request_attributes(&self, req: &ProxyRequest) -> Vec<KeyValue> {
        let http = &req.http;
        let mut attrs = Vec::with_capacity(14);
        let (method, original) = method_attribute(http.method());
        attrs.push(KeyValue::new("http.request.method", method));
        if original {
            attrs.push(KeyValue::new(
                "http.request.method_original",
                http.method().as_str().to_owned(),
            ));
        }
        attrs.push(KeyValue::new("url.path", http.uri().path().to_owned()));
        attrs.push(KeyValue::new("url.scheme", "http"));
        if let Some(version) = protocol_version(http.version()) {
            attrs.push(KeyValue::new("network.protocol.version", version));
        }
        let authority = http
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| http.uri().authority().map(|a| a.as_str()));
        if let Some(authority) = authority.and_then(|a| a.parse::<http::uri::Authority>().ok()) {
            attrs.push(KeyValue::new("server.address", authority.host().to_owned()));
            if let Some(port) = authority.port_u16() {
                attrs.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
        if let Some(id) = http
            .headers()
            .get(crate::proxy::request_id::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
        {
            attrs.push(KeyValue::new("weft.request_id", id.to_owned()));
        }
        let ctx = &req.ctx;
        match self.kind {
            SpanKind::Server => {
                attrs.push(KeyValue::new(
                    "client.address",
                    ctx.client_addr.ip().to_string(),
                ));
                if let Some(peer) = &ctx.peer_identity {
                    attrs.push(KeyValue::new("peer.service", peer.id.service().to_owned()));
                    let id = String::from_utf8_lossy(peer.header.as_bytes()).into_owned();
                    attrs.push(KeyValue::new("weft.peer.identity", id));
                }
            }
            _ => {
                if let Some(route) = self.route_name(req) {
                    attrs.push(KeyValue::new("http.route", route.to_owned()));
                }
                if let Some(cluster) = &ctx.cluster {
                    // Shared, not copied: the name is an Arc<str>.
                    attrs.push(KeyValue::new("peer.service", cluster.name.clone()));
                    attrs.push(KeyValue::new(
                        "weft.destination.cluster",
                        cluster.name.clone(),
                    ));
                }
            }
        }
        attrs
    }
}

/// `{method}` or `{method} {route}` (the convention's `{method} {target}`).
fn span_name(method: &Method, route: Option<&str>) -> Cow<'static, str> {
    let (method, _) = method_attribute(method);
    match route {
        Some(route) => Cow::Owned(format!("{method} {route}")),
        None => Cow::Borrowed(method),
    }
}

/// The method as the conventions name it: a known one, else `_OTHER`
/// (and `http.request.method_original`), so names stay a bounded set.
fn method_attribute(method: &Method) -> (&'static str, bool) {
    let known = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => return ("_OTHER", true),
    };
    (known, false)
}

fn protocol_version(version: Version) -> Option<&'static str> {
    match version {
        Version::HTTP_10 => Some("1.0"),
        Version::HTTP_11 => Some("1.1"),
        Version::HTTP_2 => Some("2"),
        Version::HTTP_3 => Some("3"),
        _ => None,
    }
}

/// A sampled span between its request and its response head.
pub struct SpanStart {
    tracer: Tracer,
    kind: SpanKind,
    current: Current,
    parent_is_remote: bool,
    tracestate: TraceState,
    name: Cow<'static, str>,
    attributes: Vec<KeyValue>,
    start_time: SystemTime,
    started: Instant,
}

impl SpanStart {
    fn finish(mut self, result: &Result<ProxyResponse, ProxyError>) {
        let Some(inner) = self.tracer.inner.as_ref() else {
            return;
        };
        let (status, cause, attempts) = match result {
            Ok(response) => {
                let status = response.status();
                let cause = (status.as_u16() >= 400)
                    .then(|| response.headers().get(ERROR_HEADER))
                    .flatten()
                    .and_then(|v| v.to_str().ok())
                    .map(|v| Cow::Owned(v.to_owned()));
                let attempts = response
                    .headers()
                    .get(ATTEMPTS_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i64>().ok());
                (status, cause, attempts)
            }
            Err(error) => (
                error.kind.status(),
                Some(Cow::Borrowed(error.kind.code())),
                None,
            ),
        };
        let code = status.as_u16();
        self.attributes
            .push(KeyValue::new("http.response.status_code", i64::from(code)));
        if let Some(tries) = attempts.filter(|n| *n > 1) {
            // One span per request; its retries are counted on it.
            self.attributes
                .push(KeyValue::new("http.request.resend_count", tries - 1));
        }
        // Conventions: a 4xx is the client's error on a CLIENT span only;
        // a refusal of the sidecar's own (x-weft-error) always counts.
        let failed = code >= 500
            || (code >= 400 && matches!(self.kind, SpanKind::Client))
            || cause.is_some();
        let status = if failed {
            let error_type: Value = match &cause {
                Some(cause) => Value::String(cause.to_string().into()),
                None => Value::String(status.as_str().to_owned().into()),
            };
            self.attributes
                .push(KeyValue::new("error.type", error_type.clone()));
            if let Some(cause) = &cause {
                self.attributes
                    .push(KeyValue::new("weft.error", cause.to_string()));
            }
            Status::Error {
                description: cause.unwrap_or(Cow::Borrowed("")),
            }
        } else {
            Status::Unset
        };
        let c = &self.current;
        let span = SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(c.trace_id.to_be_bytes()),
                SpanId::from_bytes(c.span_id.to_be_bytes()),
                TraceFlags::SAMPLED,
                false,
                self.tracestate,
            ),
            parent_span_id: c
                .parent_id
                .map_or(SpanId::INVALID, |p| SpanId::from_bytes(p.to_be_bytes())),
            parent_span_is_remote: self.parent_is_remote,
            span_kind: self.kind,
            name: self.name,
            start_time: self.start_time,
            end_time: self.start_time + self.started.elapsed(),
            attributes: self.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: inner.scope.clone(),
        };
        inner.queue.submit(span);
    }
}

pin_project_lite::pin_project! {
    pub struct Traced<F> {
        #[pin]
        inner: F,
        span: Option<SpanStart>,
    }
}

impl<F> Future for Traced<F>
where
    F: Future<Output = Result<ProxyResponse, ProxyError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Some(span) = this.span.take() {
            span.finish(&result);
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http::{HeaderMap, HeaderValue, Request, Response};
    use tower::{Layer as _, Service as _};

    use super::*;
    use crate::body::{BufferedBody, ProxyBody, RequestBody};
    use crate::proxy::{Direction, RequestCtx};

    /// What the layer below received.
    type Seen = Arc<Mutex<Option<HeaderMap>>>;

    async fn pass(layer: TraceLayer, headers: &[(&str, &str)]) -> HeaderMap {
        let seen: Seen = Default::default();
        let below = seen.clone();
        let inner = tower::service_fn(move |req: ProxyRequest| {
            *below.lock().unwrap() = Some(req.http.headers().clone());
            async { Ok::<_, ProxyError>(Response::new(ProxyBody::empty())) }
        });
        let mut request = Request::builder().uri("/");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let http = request
            .body(RequestBody::Buffered(BufferedBody {
                data: None,
                trailers: None,
            }))
            .unwrap();
        let ctx = RequestCtx::new(
            Direction::Inbound,
            "127.0.0.1:1".parse().unwrap(),
            HeaderValue::from_static("127.0.0.1"),
        );
        let mut service = layer.layer(inner);
        let _ = service.call(ProxyRequest { http, ctx }).await;
        seen.lock().unwrap().take().unwrap()
    }

    #[tokio::test]
    async fn with_tracing_off_a_request_without_context_gets_a_fresh_unsampled_traceparent() {
        let h = pass(TraceLayer::inbound(Tracer::off()), &[]).await;
        let p = context::parse_traceparent(h["traceparent"].as_bytes()).unwrap();
        assert_eq!(p.sampled, Some(false));
    }

    #[tokio::test]
    async fn with_tracing_off_the_callers_context_passes_unchanged() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let h = pass(
            TraceLayer::inbound(Tracer::off()),
            &[("traceparent", tp), ("tracestate", "a=b")],
        )
        .await;
        assert_eq!(
            (h["traceparent"].as_bytes(), h["tracestate"].as_bytes()),
            (tp.as_bytes(), &b"a=b"[..])
        );
        // B3 only: the same ids as a traceparent, B3 left as sent.
        let b3 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1";
        let h = pass(TraceLayer::inbound(Tracer::off()), &[("b3", b3)]).await;
        assert_eq!(
            h["traceparent"],
            "00-80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-01"
        );
        assert_eq!(h["b3"], b3);
    }

    #[tokio::test]
    async fn malformed_context_is_replaced_not_refused() {
        let h = pass(
            TraceLayer::inbound(Tracer::off()),
            &[("traceparent", "garbage"), ("tracestate", "orphan=1")],
        )
        .await;
        assert!(context::parse_traceparent(h["traceparent"].as_bytes()).is_some());
        assert!(!h.contains_key("tracestate"));
    }
}
