//! The harness's own parts, checked against the real things: the test app
//! answers what the other tests rely on, and Consul 1.8.7 behaves the way the
//! registrations of the harness assume. None of this needs Weft's binaries.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use weft_e2e::echo::EchoRequest;
use weft_e2e::harness::app::{App, Fault};
use weft_e2e::harness::consul::{Consul, Registration};
use weft_e2e::harness::grpc::{echo_client, websocket};
use weft_e2e::{HttpClient, run};

#[test]
fn testapp_echoes_what_it_received_and_who_it_is() {
    run(|ctx| async move {
        let app = App::start(&ctx.log_dir, "users", "users-1").await?;
        let http = HttpClient::new();
        let request = http::Request::post(format!("http://{}/a/b?x=1", app.addr))
            .header("x-api-version", "v2")
            .body(http_body_util::Full::new(bytes::Bytes::from("hello")))?;
        let echo = http.send(request).await?.echo()?;
        ensure!(
            echo.service == "users" && echo.instance == "users-1",
            "{echo:?}"
        );
        ensure!(
            echo.method == "POST" && echo.path == "/a/b" && echo.query == "x=1",
            "{echo:?}"
        );
        ensure!(
            echo.header("x-api-version") == Some("v2") && echo.body == "hello",
            "{echo:?}"
        );

        let teapot = http.get(&format!("http://{}/status/418", app.addr)).await?;
        ensure!(teapot.status.as_u16() == 418, "{teapot:?}");
        let start = std::time::Instant::now();
        http.get(&format!("http://{}/delay/100", app.addr))
            .await?
            .echo()?;
        ensure!(start.elapsed() >= Duration::from_millis(100), "no delay");
        Ok(())
    });
}

#[test]
fn testapp_faults_on_command_and_counts_what_it_sees() {
    run(|ctx| async move {
        let app = App::start(&ctx.log_dir, "users", "users-1").await?;
        let http = HttpClient::new();
        let url = format!("http://{}/x", app.addr);

        app.inject(&http, Fault::Status(503), Some(2)).await?;
        for want in [503, 503, 200] {
            let got = http.get(&url).await?.status.as_u16();
            ensure!(got == want, "expected {want}, got {got}");
        }

        app.inject(&http, Fault::Reset, None).await?;
        ensure!(http.get(&url).await.is_err(), "a reset answers nothing");
        ensure!(http.get(&url).await.is_err(), "until cleared");
        app.clear_fault(&http).await?;
        http.get(&url).await?.echo()?;

        app.inject(&http, Fault::Delay(Duration::from_millis(100)), Some(1))
            .await?;
        let start = std::time::Instant::now();
        http.get(&url).await?.echo()?;
        ensure!(start.elapsed() >= Duration::from_millis(100), "no delay");

        ensure!(
            app.requests_seen(&http).await? == 7,
            "3 status, 2 resets, 1 normal, 1 delayed"
        );
        Ok(())
    });
}

#[test]
fn testapp_serves_websocket_and_grpc_on_the_same_port() {
    run(|ctx| async move {
        let app = App::start(&ctx.log_dir, "echo", "echo-1").await?;

        let mut socket = websocket(app.addr, "echo", "/ws").await?;
        socket.send(Message::text("ping")).await?;
        let reply = socket.next().await.context("socket closed")??;
        ensure!(reply == Message::text("ping"), "{reply:?}");

        let mut client = echo_client(app.addr, "echo").await?;
        let reply = client
            .unary(EchoRequest {
                message: "hi".into(),
                repeat: 0,
            })
            .await?
            .into_inner();
        ensure!(
            reply.message == "hi" && reply.served_by == "echo-1",
            "{reply:?}"
        );
        let replies: Vec<_> = client
            .server_stream(EchoRequest {
                message: "n".into(),
                repeat: 3,
            })
            .await?
            .into_inner()
            .map(|reply| reply.map(|reply| reply.message))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        ensure!(replies == ["n-0", "n-1", "n-2"], "{replies:?}");
        Ok(())
    });
}

/// The harness registers meshed instances with a TTL check on the proxy
/// (see `Registration`); this pins down that Consul 1.8.7 lists the proxy as
/// passing at once, hides it the moment its check fails, and removes it with
/// its app.
#[test]
fn consul_hides_a_sidecar_proxy_as_soon_as_its_check_fails() {
    run(|ctx| async move {
        let consul = Consul::start(&ctx.log_dir).await?;
        let http = HttpClient::new();
        let registration = Registration::meshed("users", "users-1", 9, 10);
        consul.register(&registration).await?;
        let url = format!("{}/v1/health/connect/users?passing", consul.address());
        let passing = || async {
            let body = http.get(&url).await?.json()?;
            let proxies = body.as_array().context("not an array")?;
            Ok::<_, anyhow::Error>(
                proxies
                    .iter()
                    .map(|entry| entry["Service"]["Port"].as_u64().unwrap_or_default())
                    .collect::<Vec<_>>(),
            )
        };
        ensure!(
            passing().await? == [10],
            "the new proxy is not listed as passing"
        );

        consul.set_health(&registration, false).await?;
        ensure!(
            passing().await?.is_empty(),
            "the proxy still passes after its check failed"
        );
        consul.set_health(&registration, true).await?;
        ensure!(passing().await? == [10], "the proxy did not come back");

        consul.deregister(&registration.id).await?;
        let all = http
            .get(&format!("{}/v1/health/connect/users", consul.address()))
            .await?
            .json()?;
        ensure!(
            all.as_array().is_some_and(Vec::is_empty),
            "the proxy outlived its app: {all}"
        );
        Ok(())
    });
}
