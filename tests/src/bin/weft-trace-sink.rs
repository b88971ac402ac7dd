//! An OTLP receiver for places with no Jaeger, in two modes.
//!
//! `--discard`: the collector of `bench/mesh.py --tracing`. The benchmark
//! measures what tracing costs the sidecars, so the sink does the least a
//! collector can: it reads each request body to its end without decoding
//! it and answers an empty `ExportTraceServiceResponse` with
//! `grpc-status: 0`. It counts the export calls and bytes it took, and
//! prints them on SIGTERM/SIGINT.
//!
//! `--show ADDR`: the demo's collector (`deploy/local/demo.sh`). It keeps
//! the last 10,000 spans it received (OTLP/gRPC on `--grpc`,
//! HTTP/protobuf on `--http`) and shows one trace as a tree at
//! `GET http://ADDR/traces/<trace id>`; `?spans=N` waits up to 10 s for N
//! spans of it to arrive (sidecars export in batches).
//!
//!   weft-trace-sink --discard --grpc 127.0.0.1:4317
//!   weft-trace-sink --grpc 127.0.0.1:4317 --http 127.0.0.1:4318 --show 127.0.0.1:16686
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::net::TcpListener;
use weft_e2e::harness::otlp::{OtlpReceiver, render_trace};

#[derive(Parser)]
#[command(
    about = "An OTLP receiver: discards exports (benchmarks) or shows traces as trees (the demo)"
)]
struct Args {
    /// Where to accept OTLP/gRPC (HTTP/2 without TLS).
    #[arg(long)]
    grpc: SocketAddr,
    /// Drop every export unread.
    #[arg(long, conflicts_with_all = ["http", "show"], required_unless_present = "show")]
    discard: bool,
    /// Where to accept OTLP HTTP/protobuf (`POST /v1/traces`).
    #[arg(long, requires = "show")]
    http: Option<SocketAddr>,
    /// Keep spans and serve `GET /traces/<trace id>[?spans=N]` here.
    #[arg(long)]
    show: Option<SocketAddr>,
}

/// How many spans the `--show` mode keeps.
const KEPT_SPANS: usize = 10_000;
/// How long `?spans=N` waits.
const SHOW_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Default)]
struct Taken {
    exports: AtomicU64,
    bytes: AtomicU64,
}

/// A gRPC message of length 0: the empty `ExportTraceServiceResponse`.
const EMPTY_MESSAGE: &[u8] = &[0, 0, 0, 0, 0];

type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

async fn export(taken: &Taken, req: Request<Incoming>) -> Response<StreamBody<Frames>> {
    let mut body = req.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => bytes += frame.data_ref().map_or(0, |data| data.len() as u64),
            Err(_) => break,
        }
    }
    taken.exports.fetch_add(1, Ordering::Relaxed);
    taken.bytes.fetch_add(bytes, Ordering::Relaxed);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = vec![
        Ok(Frame::data(Bytes::from_static(EMPTY_MESSAGE))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut response = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(show) = args.show {
        let http = args.http.unwrap_or(([127, 0, 0, 1], 0).into());
        return show_traces(args.grpc, http, show).await;
    }
    let listener = TcpListener::bind(args.grpc)
        .await
        .with_context(|| format!("binding {}", args.grpc))?;
    let taken = Arc::new(Taken::default());
    println!(
        "READY {}",
        listener.local_addr().context("reading the bound address")?
    );
    let serve = {
        let taken = taken.clone();
        async move {
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        eprintln!("accept failed: {error}");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let taken = taken.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let taken = taken.clone();
                        async move { Ok::<_, Infallible>(export(&taken, req).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, service)
                    .await;
                });
            }
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        () = serve => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!(
        "took {} exports, {} bytes",
        taken.exports.load(Ordering::Relaxed),
        taken.bytes.load(Ordering::Relaxed)
    );
    Ok(())
}

/// The `--show` mode: a receiver that keeps spans, and a page per trace.
async fn show_traces(grpc: SocketAddr, http: SocketAddr, show: SocketAddr) -> anyhow::Result<()> {
    let receiver = Arc::new(OtlpReceiver::start_on(grpc, http, KEPT_SPANS).await?);
    let listener = TcpListener::bind(show)
        .await
        .with_context(|| format!("binding {show}"))?;
    println!(
        "READY otlp-grpc {} otlp-http {} traces http://{}/traces/<trace id>",
        receiver.grpc,
        receiver.http,
        listener.local_addr()?
    );
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let receiver = receiver.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let receiver = receiver.clone();
                async move { Ok::<_, Infallible>(trace_page(&receiver, &req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn trace_page(receiver: &OtlpReceiver, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: http::StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    let Some(trace_id) = req
        .uri()
        .path()
        .strip_prefix("/traces/")
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase)
    else {
        return text(
            http::StatusCode::NOT_FOUND,
            "GET /traces/<32 hex digits trace id>[?spans=N]\n".into(),
        );
    };
    let wanted = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("spans="))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1);
    let found = receiver
        .wait_for(SHOW_WAIT, "the trace's spans", |spans| {
            let have = spans.iter().filter(|s| s.trace_id == trace_id).count();
            anyhow::ensure!(have >= wanted, "{have} of {wanted} spans");
            Ok(())
        })
        .await;
    let tree = render_trace(&receiver.spans(), &trace_id);
    match found {
        Ok(()) => text(http::StatusCode::OK, tree),
        Err(_) => text(
            http::StatusCode::NOT_FOUND,
            format!("not all spans arrived\n{tree}"),
        ),
    }
}
