//! A steady-traffic driver: an app calling a service at a fixed rate in the
//! background, recording which instance answered every request and every
//! failure with its status and `x-weft-error`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};

use anyhow::Context as _;

use super::eventually::eventually;
use super::http::{Call, HttpClient};
use super::mesh::{SETUP_TIMEOUT, wait_for_instances};

/// Requests in flight at most; beyond it the driver waits (a stuck mesh shows
/// up as failures and a lower rate, not as unbounded memory).
const MAX_IN_FLIGHT: usize = 256;

/// What to send.
#[derive(Clone, Debug)]
pub struct TrafficSpec {
    /// The calling sidecar's outbound listener.
    pub outbound: SocketAddr,
    pub host: String,
    pub path: String,
    /// Requests per second.
    pub rate: u32,
}

impl TrafficSpec {
    /// `GET http://<host>/` through `outbound`, `rate` times a second.
    pub fn get(outbound: SocketAddr, host: &str, rate: u32) -> Self {
        Self {
            outbound,
            host: host.into(),
            path: "/".into(),
            rate,
        }
    }
}

/// A request an app instance answered.
#[derive(Clone, Debug)]
pub struct Hit {
    /// When the request was sent.
    pub sent_at: Instant,
    pub instance: String,
}

/// A request that did not get a 2xx answer from an app.
#[derive(Clone, Debug)]
pub struct Failure {
    pub sent_at: Instant,
    pub status: Option<StatusCode>,
    pub weft_error: Option<String>,
    pub error: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(
                f,
                "{status} x-weft-error={} {}",
                self.weft_error.as_deref().unwrap_or("-"),
                self.error
            ),
            None => write!(f, "no answer: {}", self.error),
        }
    }
}

/// Everything the driver saw.
#[derive(Clone, Debug, Default)]
pub struct TrafficReport {
    pub hits: Vec<Hit>,
    pub failures: Vec<Failure>,
}

impl TrafficReport {
    pub fn sent(&self) -> usize {
        self.hits.len() + self.failures.len()
    }

    /// Answers per instance.
    pub fn by_instance(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for hit in &self.hits {
            *counts.entry(hit.instance.clone()).or_default() += 1;
        }
        counts
    }

    /// The first request sent at or after `since` that `instance` answered.
    pub fn first_hit(&self, instance: &str, since: Instant) -> Option<Instant> {
        self.hits
            .iter()
            .filter(|hit| hit.instance == instance && hit.sent_at >= since)
            .map(|hit| hit.sent_at)
            .min()
    }

    /// The last request `instance` answered.
    pub fn last_hit(&self, instance: &str) -> Option<Instant> {
        self.hits
            .iter()
            .filter(|hit| hit.instance == instance)
            .map(|hit| hit.sent_at)
            .max()
    }

    /// The last request sent (answered or not).
    pub fn last_sent(&self) -> Option<Instant> {
        let hits = self.hits.iter().map(|hit| hit.sent_at);
        let failures = self.failures.iter().map(|failure| failure.sent_at);
        hits.chain(failures).max()
    }

    /// A one-paragraph summary for test output and failure messages.
    pub fn summary(&self) -> String {
        let mut causes = BTreeMap::<String, usize>::new();
        for failure in &self.failures {
            let cause = match (failure.status, &failure.weft_error) {
                (Some(status), Some(cause)) => format!("{} {cause}", status.as_u16()),
                (Some(status), None) => format!("{} (no x-weft-error)", status.as_u16()),
                (None, _) => "no answer".to_owned(),
            };
            *causes.entry(cause).or_default() += 1;
        }
        let mut text = format!(
            "{} sent, {} answered by an app {:?}, {} failed {:?}",
            self.sent(),
            self.hits.len(),
            self.by_instance(),
            self.failures.len(),
            causes
        );
        if let Some(first) = self.failures.first() {
            text.push_str(&format!("; first failure: {first}"));
        }
        text
    }

    /// Fails with the summary when any request failed.
    pub fn assert_no_failures(&self) -> anyhow::Result<()> {
        if !self.failures.is_empty() {
            anyhow::bail!("steady traffic had failures: {}", self.summary());
        }
        Ok(())
    }
}

/// The background driver; [`Traffic::stop`] ends it and returns the report.
pub struct Traffic {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    report: Arc<Mutex<TrafficReport>>,
}

impl Traffic {
    pub fn start(http: HttpClient, spec: TrafficSpec) -> Self {
        let (stop, stopped) = watch::channel(false);
        let report = Arc::new(Mutex::new(TrafficReport::default()));
        let task = tokio::spawn(drive(http, spec, stopped, report.clone()));
        Self { stop, task, report }
    }

    /// Starts `spec` once a call through `spec.outbound` reaches every one
    /// of `instances`, and returns when each has answered some of it.
    pub async fn start_reaching(
        http: HttpClient,
        spec: TrafficSpec,
        instances: &[&str],
    ) -> anyhow::Result<Self> {
        let call = Call::get(&spec.host, &spec.path);
        wait_for_instances(&http, spec.outbound, call, instances).await?;
        let traffic = Self::start(http, spec);
        let start = Instant::now();
        for instance in instances {
            traffic.reaches(instance, start).await?;
        }
        Ok(traffic)
    }

    /// A copy of what was recorded so far.
    pub fn report(&self) -> TrafficReport {
        lock(&self.report).clone()
    }

    /// Waits until `instance` has answered a request sent after `since`, and
    /// returns how long after `since` that request was sent.
    pub async fn reaches(&self, instance: &str, since: Instant) -> anyhow::Result<Duration> {
        eventually(
            SETUP_TIMEOUT,
            &format!("traffic reaches {instance}"),
            || async {
                let report = self.report();
                let hit = report.first_hit(instance, since).with_context(|| {
                    format!("no request reached {instance} yet: {}", report.summary())
                })?;
                Ok(hit.saturating_duration_since(since))
            },
        )
        .await
    }

    /// Stops sending, waits for the requests in flight, returns the report.
    pub async fn stop(self) -> TrafficReport {
        let _ = self.stop.send(true);
        if let Err(error) = self.task.await {
            lock(&self.report).failures.push(Failure {
                sent_at: Instant::now(),
                status: None,
                weft_error: None,
                error: format!("the traffic driver panicked: {error}"),
            });
        }
        lock(&self.report).clone()
    }
}

async fn drive(
    http: HttpClient,
    spec: TrafficSpec,
    mut stopped: watch::Receiver<bool>,
    report: Arc<Mutex<TrafficReport>>,
) {
    let period = Duration::from_secs_f64(1.0 / f64::from(spec.rate.max(1)));
    let mut ticks = tokio::time::interval(period);
    // After a stall, keep the rate rather than firing a burst.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut in_flight = JoinSet::new();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.changed() => break,
        }
        while in_flight.len() >= MAX_IN_FLIGHT {
            in_flight.join_next().await;
        }
        // Reap finished requests so the set stays small.
        while in_flight.try_join_next().is_some() {}
        let http = http.clone();
        let spec = spec.clone();
        let report = report.clone();
        in_flight.spawn(async move {
            let sent_at = Instant::now();
            let result = http
                .call(spec.outbound, Call::get(&spec.host, &spec.path))
                .await;
            let mut report = lock(&report);
            match result {
                Ok(reply) => match reply.echo() {
                    Ok(echo) => report.hits.push(Hit {
                        sent_at,
                        instance: echo.instance,
                    }),
                    Err(error) => report.failures.push(Failure {
                        sent_at,
                        status: Some(reply.status),
                        weft_error: reply.weft_error().map(str::to_owned),
                        error: format!("{error:#}"),
                    }),
                },
                Err(error) => report.failures.push(Failure {
                    sent_at,
                    status: None,
                    weft_error: None,
                    error: format!("{error:#}"),
                }),
            }
        });
    }
    while in_flight.join_next().await.is_some() {}
}

fn lock(report: &Mutex<TrafficReport>) -> std::sync::MutexGuard<'_, TrafficReport> {
    // Every push is complete or absent, so a poisoned report is still consistent.
    report
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
