//! Compression as a client meets it: `client` calls `users` through its
//! sidecar, and the route's compression policy encodes the answers. The
//! app (in this test's process, registered and meshed like any instance)
//! serves a 20 KB JSON document, a small one and one it compressed
//! itself; what the client receives is decoded by decoders independent of
//! the sidecar's (flate2, brotli, zstd).

use std::convert::Infallible;
use std::io::{Read as _, Write as _};

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use serde_json::json;
use weft_e2e::harness::mesh::SETUP_TIMEOUT;
use weft_e2e::{Mesh, eventually, run};

/// A JSON document of about 20 KB, like an API's list answer.
fn big_json() -> Bytes {
    let items: Vec<String> = (0..450)
        .map(|i| format!(r#"{{"id":{i},"name":"user {i}","email":"user{i}@example.com"}}"#))
        .collect();
    Bytes::from(format!("[{}]", items.join(",")))
}

const SMALL_JSON: &str = r#"{"ok":true}"#;

fn gzip(plain: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(plain).expect("gzip in memory");
    encoder.finish().expect("gzip in memory")
}

fn decode(encoding: &str, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
        }
        "br" => {
            brotli::Decompressor::new(bytes, 4096).read_to_end(&mut out)?;
        }
        "zstd" => out = zstd::stream::decode_all(bytes)?,
        other => anyhow::bail!("no decoder for {other}"),
    }
    Ok(out)
}

/// The app: `/big` (20 KB JSON with a strong ETag and `Vary: Origin`),
/// `/small`, `/encoded` (JSON it gzipped itself), and `/upload`, which
/// answers what it received: the body's length, its Content-Encoding,
/// and whether it is the big document.
async fn app(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let coding = req
        .headers()
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json = |body: Bytes| {
        Response::builder()
            .header("content-type", "application/json")
            .header("content-length", body.len())
    };
    let response = match path.as_str() {
        "/big" => json(big_json())
            .header("etag", "\"v1\"")
            .header("vary", "Origin")
            .body(Full::new(big_json())),
        "/small" => json(Bytes::from_static(SMALL_JSON.as_bytes()))
            .body(Full::new(Bytes::from_static(SMALL_JSON.as_bytes()))),
        "/encoded" => {
            let encoded = Bytes::from(gzip(&big_json()));
            json(encoded.clone())
                .header("content-encoding", "gzip")
                .body(Full::new(encoded))
        }
        "/upload" => {
            let seen = json!({ "length": body.len(), "content_encoding": coding,
                               "is_big": body == big_json() })
            .to_string();
            json(Bytes::from(seen.clone())).body(Full::new(Bytes::from(seen)))
        }
        _ => Response::builder()
            .status(404)
            .body(Full::new(Bytes::new())),
    };
    Ok(response.expect("a response"))
}

#[test]
fn answers_are_compressed_as_the_client_accepts_and_small_or_encoded_ones_are_untouched() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let app_port = weft_e2e::harness::app::serve_in_test(app).await?;
        let (_users_sidecar, _registration) =
            mesh.sidecar_for("users", "users-1", app_port, &[]).await?;
        let client = mesh.client().await?;
        mesh.put_document(
            "routes/users",
            &json!({ "routes": [ { "destination": "users",
                "compression": { "encodings": ["zstd", "br", "gzip"],
                                 "decompress_requests": true } } ] }),
        )
        .await?;
        let outbound = client.sidecar.outbound;
        let get = |path: &str, accept: Option<&str>| {
            let mut request = Request::builder()
                .uri(format!("http://{outbound}{path}"))
                .header("host", "users");
            if let Some(accept) = accept {
                request = request.header("accept-encoding", accept);
            }
            request.body(Full::new(Bytes::new())).expect("a request")
        };
        eventually(SETUP_TIMEOUT, "the route compresses", || async {
            let reply = mesh.http.send(get("/big", Some("gzip"))).await?;
            ensure!(
                reply.header("content-encoding") == Some("gzip"),
                "{} {:?}",
                reply.status,
                reply.headers
            );
            Ok(())
        })
        .await?;

        // Each encoding, as the client asks; q-values honoured, ties to
        // the policy's order (zstd first).
        for (accept, want) in [
            ("gzip", "gzip"),
            ("br", "br"),
            ("zstd", "zstd"),
            ("gzip;q=0.5, br;q=0.9", "br"),
            ("gzip, deflate, br, zstd", "zstd"),
            ("*;q=0.1, zstd;q=0, gzip;q=0.2", "gzip"),
        ] {
            let reply = mesh.http.send(get("/big", Some(accept))).await?;
            ensure!(reply.status == 200, "{accept}: {}", reply.status);
            ensure!(
                reply.header("content-encoding") == Some(want),
                "{accept}: {:?}",
                reply.headers
            );
            ensure!(
                reply.header("content-length").is_none()
                    && reply.header("vary") == Some("Origin, Accept-Encoding")
                    && reply.header("etag") == Some("W/\"v1\""),
                "{accept}: the headers {:?}",
                reply.headers
            );
            ensure!(
                reply.body.len() < big_json().len() / 4,
                "{accept}: {} bytes sent for {}",
                reply.body.len(),
                big_json().len()
            );
            let decoded = decode(want, &reply.body).with_context(|| accept.to_string())?;
            ensure!(decoded == big_json(), "{accept}: the decoded body differs");
        }

        // A client that accepts nothing gets the document as it is, with
        // Vary so a cache keeps both forms apart.
        let plain = mesh.http.send(get("/big", None)).await?;
        ensure!(
            plain.header("content-encoding").is_none()
                && plain.body == big_json()
                && plain.header("vary") == Some("Origin, Accept-Encoding")
                && plain.header("etag") == Some("\"v1\""),
            "plain: {:?}",
            plain.headers
        );
        // Small and already-encoded answers are untouched.
        let small = mesh
            .http
            .send(get("/small", Some("gzip, br, zstd")))
            .await?;
        ensure!(
            small.header("content-encoding").is_none()
                && small.body == SMALL_JSON.as_bytes()
                && small.header("content-length") == Some("11"),
            "small: {:?}",
            small.headers
        );
        let encoded = mesh.http.send(get("/encoded", Some("br, zstd"))).await?;
        ensure!(
            encoded.header("content-encoding") == Some("gzip") && encoded.body == gzip(&big_json()),
            "encoded: {:?}",
            encoded.headers
        );

        // A gzipped upload reaches the app decoded; a malformed one is
        // refused with a 400 and never reaches it whole.
        let upload = |body: Vec<u8>| {
            Request::builder()
                .method("POST")
                .uri(format!("http://{outbound}/upload"))
                .header("host", "users")
                .header("content-type", "application/json")
                .header("content-encoding", "gzip")
                .body(Full::new(Bytes::from(body)))
                .expect("an upload")
        };
        let reply = mesh.http.send(upload(gzip(&big_json()))).await?;
        let seen = reply.json()?;
        ensure!(
            seen["is_big"] == true && seen["content_encoding"] == "none",
            "the app saw {seen}"
        );
        let refused = mesh.http.send(upload(b"not gzip at all".to_vec())).await?;
        ensure!(
            refused.status == 400,
            "a malformed upload got {} {:?}",
            refused.status,
            refused.text()
        );

        let metrics = mesh
            .http
            .get(&format!("http://{}/metrics", client.sidecar.admin))
            .await?
            .text();
        for line in [
            "weft_compression_responses_total{direction=\"outbound\",encoding=\"br\"}",
            "weft_compression_skipped_total{direction=\"outbound\",reason=\"too-small\"}",
            "weft_compression_skipped_total{direction=\"outbound\",reason=\"already-encoded\"}",
            "weft_compression_bytes_total{direction=\"outbound\",stage=\"out\"}",
            "weft_compression_requests_decoded_total{direction=\"outbound\",encoding=\"gzip\"}",
        ] {
            ensure!(metrics.contains(line), "no {line} in /metrics:\n{metrics}");
        }
        Ok(())
    });
}

#[test]
fn a_services_own_policy_compresses_its_answers_on_its_sidecar() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let app_port = weft_e2e::harness::app::serve_in_test(app).await?;
        let (users_sidecar, _registration) =
            mesh.sidecar_for("users", "users-1", app_port, &[]).await?;
        let client = mesh.client().await?;
        // The service's default, gzip only: the client's route has none,
        // so what arrives encoded was encoded by users' own sidecar.
        mesh.put_document(
            "policies/users",
            &json!({ "compression": { "encodings": ["gzip"], "gzip_level": 9 } }),
        )
        .await?;
        let outbound = client.sidecar.outbound;
        let get = |accept: &str| {
            Request::builder()
                .uri(format!("http://{outbound}/big"))
                .header("host", "users")
                .header("accept-encoding", accept)
                .body(Full::new(Bytes::new()))
                .expect("a request")
        };
        eventually(SETUP_TIMEOUT, "users' sidecar compresses", || async {
            let reply = mesh.http.send(get("gzip")).await?;
            ensure!(
                reply.header("content-encoding") == Some("gzip"),
                "{} {:?}",
                reply.status,
                reply.headers
            );
            ensure!(
                decode("gzip", &reply.body)? == big_json(),
                "the decoded body differs"
            );
            Ok(())
        })
        .await?;
        // Only the policy's encodings: a client asking for br gets the
        // document as it is.
        let reply = mesh.http.send(get("br, zstd")).await?;
        ensure!(
            reply.header("content-encoding").is_none()
                && reply.body == big_json()
                && reply.header("vary") == Some("Origin, Accept-Encoding"),
            "br, zstd: {:?}",
            reply.headers
        );
        let metrics = mesh
            .http
            .get(&format!("http://{}/metrics", users_sidecar.admin))
            .await?
            .text();
        for line in [
            "weft_compression_responses_total{direction=\"inbound\",encoding=\"gzip\"}",
            "weft_compression_skipped_total{direction=\"inbound\",reason=\"not-accepted\"}",
        ] {
            ensure!(metrics.contains(line), "no {line} in /metrics:\n{metrics}");
        }
        Ok(())
    });
}
