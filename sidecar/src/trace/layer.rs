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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::Method;
use tower::{Layer, Service};

use super::Tracer;
use super::context::{self, Current, TRACESTATE};
use super::span::{Cause, SpanKind, SpanRecord};
use crate::error::{ATTEMPTS_HEADER, ProxyError, peer_refusal_code};
use crate::model::{Exchange, ProxyResponse};

/// What tracing reads of a request beyond [`Exchange`]: the names a CLIENT
/// span carries. Shared names, so a sampled span keeps them without a copy.
pub trait TraceTarget: Exchange {
    /// The name of the route the request took (empty when it has none).
    fn route_name(&self) -> Option<&Arc<str>>;
    /// The name of the cluster `split` chose.
    fn cluster_name(&self) -> Option<&Arc<str>>;
}

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
            kind: self.kind,
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

impl<S, R> Service<R> for Trace<S>
where
    R: TraceTarget,
    S: Service<R, Response = ProxyResponse, Error = ProxyError>,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Traced<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: R) -> Self::Future {
        // A plain CONNECT is an opaque tunnel, not an HTTP exchange.
        let span = if req.http().method() == Method::CONNECT {
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
    fn start(&self, req: &mut impl TraceTarget) -> Option<SpanStart> {
        let headers = req.http_mut().headers_mut();
        let context::Extracted {
            parent,
            b3: style,
            tracestate,
        } = context::extract(headers);
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
                    if tracestate {
                        headers.remove(TRACESTATE);
                    }
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
                    if tracestate {
                        headers.remove(TRACESTATE);
                    }
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
        if tracestate && !w3c_parent {
            // tracestate belongs to a traceparent; without one it is void.
            headers.remove(TRACESTATE);
        }
        context::inject(headers, &current, style);
        if !current.sampled {
            return None;
        }
        let tracestate = (tracestate && w3c_parent)
            .then(|| headers.get(TRACESTATE).cloned())
            .flatten();
        let http = req.http();
        let server = self.kind == SpanKind::Server;
        Some(SpanStart {
            tracer: self.tracer.clone(),
            record: SpanRecord {
                kind: self.kind,
                trace_id: current.trace_id,
                span_id: current.span_id,
                parent_id: current.parent_id,
                tracestate,
                method: http.method().clone(),
                uri: http.uri().clone(),
                version: http.version(),
                host: http.headers().get(http::header::HOST).cloned(),
                request_id: http.headers().get(crate::model::REQUEST_ID).cloned(),
                client_ip: server.then(|| req.client_addr().ip()),
                peer: req.peer_identity().cloned(),
                route: if server {
                    None
                } else {
                    req.route_name().cloned()
                },
                cluster: if server {
                    None
                } else {
                    req.cluster_name().cloned()
                },
                start_unix_nanos: unix_nanos(SystemTime::now()),
                end_unix_nanos: 0,
                status: 0,
                cause: None,
                attempts: None,
            },
            started: Instant::now(),
        })
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A sampled span between its request and its response head.
pub struct SpanStart {
    tracer: Tracer,
    record: SpanRecord,
    started: Instant,
}

impl SpanStart {
    fn finish(mut self, result: &Result<ProxyResponse, ProxyError>) {
        let Some(inner) = self.tracer.inner.as_ref() else {
            return;
        };
        let r = &mut self.record;
        match result {
            Ok(response) => {
                let status = response.status().as_u16();
                r.status = status;
                // A CLIENT span's answer came across the network and may
                // be a peer sidecar's refusal; a SERVER span's is the app's.
                if r.kind == SpanKind::Client {
                    r.cause = peer_refusal_code(response).cloned().map(Cause::Peer);
                }
                r.attempts = response
                    .headers()
                    .get(ATTEMPTS_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
            }
            Err(error) => {
                r.status = error.kind.status().as_u16();
                r.cause = Some(Cause::Refused(error.kind));
            }
        }
        // Monotonic duration: the wall clock may step meanwhile.
        r.end_unix_nanos = r.start_unix_nanos + self.started.elapsed().as_nanos() as u64;
        inner.queue.submit(self.record);
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

    use http::{HeaderMap, Request, Response};
    use tower::{Layer as _, Service as _};

    use super::*;
    use crate::body::{BufferedBody, ProxyBody, RequestBody};

    use crate::table::request::{ProxyRequest, Snapshot, for_tests};

    /// What the layer below received.
    type Seen = Arc<Mutex<Option<HeaderMap>>>;

    async fn pass(layer: TraceLayer, headers: &[(&str, &str)]) -> HeaderMap {
        let seen: Seen = Default::default();
        let below = seen.clone();
        let inner = tower::service_fn(move |req: ProxyRequest<Snapshot>| {
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
        let mut service = layer.layer(inner);
        let _ = service
            .call(for_tests::snapshot(Arc::default(), http))
            .await;
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
