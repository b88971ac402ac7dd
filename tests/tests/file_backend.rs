//! The embedded file backend (`--config-dir`): the same routing as with
//! Consul, with no Consul at all, and changes to the files applied as fast.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::json;
use tokio::time::Instant;
use weft_e2e::harness::app::App;
use weft_e2e::harness::fixtures::{API_SERVICES, all_to, api_routes};
use weft_e2e::harness::mesh::SETUP_TIMEOUT;
use weft_e2e::{Call, FileMesh, Traffic, TrafficSpec, eventually, run, tally, wait_for_route};

fn endpoints_yaml(apps: &[&App]) -> String {
    let mut services = serde_json::Map::new();
    for app in apps {
        let endpoints = services
            .entry(app.service.clone())
            .or_insert_with(|| json!([]));
        if let Some(list) = endpoints.as_array_mut() {
            list.push(
                json!({ "address": "127.0.0.1", "port": app.port(), "meshed": false, "weight": 1 }),
            );
        }
    }
    // JSON is YAML: the file stays readable and needs no YAML writer here.
    serde_json::to_string_pretty(&json!({ "services": services })).unwrap_or_default()
}

#[test]
fn the_file_backend_serves_the_same_routing_without_consul() {
    run(|ctx| async move {
        let mut apps = Vec::new();
        for service in API_SERVICES {
            apps.push(App::start(&ctx.log_dir, service, &format!("{service}-1")).await?);
        }
        let app_refs: Vec<&App> = apps.iter().collect();
        let mesh = FileMesh::start(
            &ctx,
            &[
                ("endpoints.yaml", endpoints_yaml(&app_refs)),
                ("routes/api.json", api_routes().to_string()),
            ],
        )
        .await?;
        let (_client_app, client) = mesh.sidecar("client", "client-1").await?;
        let outbound = client.outbound;
        wait_for_route(
            &mesh.http,
            outbound,
            Call::get("api", "/health"),
            "the api routes apply",
            |e| e.service == "users",
        )
        .await?;

        let echo = mesh
            .http
            .call_get(outbound, "api", "/api/v1/users/42")
            .await?
            .echo()?;
        ensure!(
            echo.service == "users" && echo.path == "/42",
            "prefix rewrite: {echo:?}"
        );
        let v2 = Call::get("api", "/api/v1/users/42").headers(&[("x-api-version", "v2")]);
        let echo = mesh.http.call(outbound, v2).await?.echo()?;
        ensure!(
            echo.service == "users-v2" && echo.path == "/42",
            "header match: {echo:?}"
        );
        let echo = mesh.http.call_get(outbound, "orders", "/x").await?.echo()?;
        ensure!(
            echo.service == "orders",
            "host without a document: {echo:?}"
        );

        // 1,000 requests over the 90/10 split: orders-v2 is binomial, mean
        // 100, sd 9.5; 5 sd tolerance (53..=147) as in the Consul test.
        let counts = tally(&mesh.http, outbound, Call::get("api", "/o"), 1_000).await?;
        let v2 = counts.get("orders-v2-1").copied().unwrap_or_default();
        ctx.record(
            "file backend 90/10 split over 1000 requests",
            &format!("{counts:?}"),
        );
        ensure!(
            (53..=147).contains(&v2),
            "orders-v2 got {v2} of 1000: {counts:?}"
        );
        Ok(())
    });
}

#[test]
fn file_changes_apply_within_1s() {
    run(|ctx| async move {
        let users_1 = App::start(&ctx.log_dir, "users", "users-1").await?;
        let users_v2 = App::start(&ctx.log_dir, "users-v2", "users-v2-1").await?;
        let mesh = FileMesh::start(
            &ctx,
            &[("endpoints.yaml", endpoints_yaml(&[&users_1, &users_v2]))],
        )
        .await?;
        let (_client_app, client) = mesh.sidecar("client", "client-1").await?;
        wait_for_route(
            &mesh.http,
            client.outbound,
            Call::get("users", "/"),
            "users is routed",
            |e| e.instance == "users-1",
        )
        .await?;
        let traffic = Traffic::start(
            mesh.http.clone(),
            TrafficSpec::get(client.outbound, "users", 200),
        );

        // A new endpoint in endpoints.yaml.
        let users_2 = App::start(&ctx.log_dir, "users", "users-2").await?;
        mesh.write(
            "endpoints.yaml",
            &endpoints_yaml(&[&users_1, &users_2, &users_v2]),
        )?;
        let written = Instant::now();
        let endpoint_latency = eventually(SETUP_TIMEOUT, "users-2 receives traffic", || async {
            let hit = traffic
                .report()
                .first_hit("users-2", written)
                .context("not yet")?;
            Ok(hit.saturating_duration_since(written))
        })
        .await?;
        ctx.measured(
            "file backend: new endpoint receives traffic",
            endpoint_latency,
        );

        // A new route document.
        mesh.write("routes/users.json", &all_to("users-v2").to_string())?;
        let written = Instant::now();
        let route_latency = eventually(
            SETUP_TIMEOUT,
            "users-v2 receives users' traffic",
            || async {
                let hit = traffic
                    .report()
                    .first_hit("users-v2-1", written)
                    .context("not yet")?;
                Ok(hit.saturating_duration_since(written))
            },
        )
        .await?;
        ctx.measured("file backend: route change applied", route_latency);

        let report = traffic.stop().await;
        report.assert_no_failures()?;
        ensure!(
            endpoint_latency < Duration::from_secs(1),
            "new endpoint took {endpoint_latency:?}"
        );
        ensure!(
            route_latency < Duration::from_secs(1),
            "route change took {route_latency:?}"
        );
        Ok(())
    });
}
