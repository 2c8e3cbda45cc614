//! The server process as `/proc` shows it: its start, its CPU time and its peak memory; and the
//! database's own ceiling, by `pgbench`.

use std::time::Duration;

use anyhow::Context as _;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::Args;

/// The server's CPU seconds since `before` (see [`server_usage`]).
pub(crate) fn cpu_seconds_since(pid: Option<u32>, before: Option<f64>) -> Option<f64> {
    before.zip(server_usage(pid).0).map(|(b, a)| a - b)
}

/// Polls `Health/Check` until SERVING; prints the time from the server process's start
/// (`/proc/<pid>/stat`, in clock ticks: 10 ms resolution) to the first SERVING answer.
pub(crate) async fn startup(args: &Args) -> anyhow::Result<()> {
    let pid = args.server_pid.context("--startup needs --server-pid")?;
    let deadline = keystone::clock::monotonic() + Duration::from_secs(30);
    // Built once: with --ca-file it reads the CA, which polling every 2 ms need not repeat.
    let endpoint = crate::endpoint(args, &args.addr)?;
    loop {
        anyhow::ensure!(
            keystone::clock::monotonic() < deadline,
            "the server did not report SERVING in 30 s"
        );
        let serving = match endpoint.connect().await {
            Ok(channel) => HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok_and(|r| r.into_inner().status == 1),
            Err(_) => false,
        };
        if serving {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let since_start = process_age(pid).context("cannot read the server's start time")?;
    if args.json {
        println!(r#"{{"start_to_serving_ms": {:.0}}}"#, since_start * 1000.0);
    } else {
        println!("start to SERVING: {:.0} ms", since_start * 1000.0);
    }
    Ok(())
}

/// Seconds since process `pid` started (Linux).
pub(crate) fn process_age(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    // starttime is field 22 of stat: the 20th after the command name.
    let started_ticks: f64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(uptime - started_ticks / 100.0)
}

/// The server's CPU seconds (user + system) and peak RSS in MiB, from `/proc`.
pub(crate) fn server_usage(pid: Option<u32>) -> (Option<f64>, Option<f64>) {
    let Some(pid) = pid else {
        return (None, None);
    };
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name in parentheses; utime and stime are 14th and 15th.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        });
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024.0)
        });
    (cpu, rss)
}

/// The database's own ceiling: `pgbench -N` (the simple-update transaction, no vacuum) with
/// `clients` connections on 2 threads for `seconds` (whole seconds, at least one) against
/// `conninfo`, whose pgbench tables exist (`pgbench -i`). Transactions per second.
pub(crate) async fn pgbench(conninfo: &str, clients: usize, seconds: f64) -> anyhow::Result<f64> {
    let seconds = (seconds.ceil() as u64).max(1);
    let conninfo = conninfo.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("pgbench")
            .args(["-N", "-n", "-c", &clients.to_string(), "-j", "2", "-T"])
            .arg(seconds.to_string())
            .arg(conninfo)
            .output()
    })
    .await?
    .context("cannot run pgbench (Debian's postgresql-client)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    tps_of(&stdout).with_context(|| format!("no tps in pgbench's output: {stdout}"))
}

/// The `tps = …` figure of pgbench's report.
fn tps_of(report: &str) -> Option<f64> {
    report
        .lines()
        .find_map(|line| line.trim().strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_tps_is_read_from_pgbenchs_report() {
        let report = "latency average = 10.8 ms\ninitial connection time = 20.1 ms\n\
                      tps = 2961.345 (without initial connection time)\n";
        assert_eq!(super::tps_of(report), Some(2961.345));
        assert_eq!(super::tps_of("pgbench: error"), None);
    }
}
