//! An OTLP/gRPC receiver that accepts every export and keeps nothing: the
//! collector of `bench/mesh.py --tracing`. The benchmark measures what
//! tracing costs the sidecars, so the sink does the least a collector can:
//! it reads each request body to its end without decoding it and answers
//! an empty `ExportTraceServiceResponse` with `grpc-status: 0`. It counts
//! the export calls and bytes it took, and prints them on SIGTERM/SIGINT.
//!
//!   weft-trace-sink --discard --grpc 127.0.0.1:4317
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(about = "An OTLP/gRPC sink that discards what it receives (for benchmarks)")]
struct Args {
    /// Where to accept OTLP/gRPC (HTTP/2 without TLS).
    #[arg(long)]
    grpc: SocketAddr,
    /// Drop every export unread. The only mode so far; required so that a
    /// command line says what the sink does.
    #[arg(long, required = true)]
    discard: bool,
}

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
