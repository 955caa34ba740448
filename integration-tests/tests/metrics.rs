//! `/metrics` end to end: the `[metrics] listen` listener with a bearer
//! token (401 without it), the build info, a received-bytes counter that
//! moves when a file syncs, and the config refusing a non-loopback
//! listener without a token.

use std::{
    io::{Read, Write},
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use fleetsync_integration_tests::*;

const TOKEN: &str = "metrics-test-token-5f1c";
/// node/src/cli.rs
const EXIT_CONFIG: i32 = 3;

fn folders(_: usize) -> Vec<FolderSpec> {
    vec![FolderSpec::new("shared")]
}

/// `GET /metrics` with an optional bearer token: (status code, headers,
/// body). `None` if the listener does not answer.
fn scrape(addr: SocketAddr, token: Option<&str>) -> Option<(u16, String, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, head.to_string(), body.to_string()))
}

/// The value of the sample `series` (name and labels exactly as exposed).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The metrics listener's address, as the node recorded it.
fn metrics_addr(n: &Node) -> SocketAddr {
    let mut addr = None;
    wait_until(DEADLINE, "metrics.addr", || {
        addr = std::fs::read_to_string(n.data.join("metrics.addr"))
            .ok()
            .and_then(|t| t.trim().parse().ok());
        addr.is_some()
    });
    addr.expect("waited for it")
}

#[test]
fn metrics_listener_wants_the_token_and_counts_received_bytes() {
    let mut c = Cluster::new(2, Topology::Full, folders);
    let token_file = c.nodes[1].root.join("metrics.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    c.nodes[1].extra = format!(
        "\n[metrics]\nlisten = \"127.0.0.1:0\"\nbearer_token_file = {:?}\n",
        token_file
    );
    for n in &mut c.nodes {
        n.start();
    }
    c.wait_connected();
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let addr = metrics_addr(b);
    assert_ne!(addr, b.admin, "the metrics listener is not the admin API");

    let (code, head, _) = scrape(addr, None).expect("metrics listener answers");
    assert_eq!(code, 401, "no token: {head}");
    let (code, _, _) = scrape(addr, Some("wrong")).expect("answers");
    assert_eq!(code, 401, "a wrong token");
    let (code, head, body) = scrape(addr, Some(TOKEN)).expect("answers");
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.contains("fleetsync_build_info{version=\""), "{body}");
    assert!(
        body.contains("# TYPE fleetsync_folder_received_bytes counter"),
        "{body}"
    );
    // The admin API serves the same exposition (loopback, no token).
    let admin = get(b.admin, "/metrics").expect("admin /metrics");
    assert!(admin.contains("fleetsync_build_info"), "{admin}");

    let series = "fleetsync_folder_received_bytes_total{folder=\"shared\"}";
    let before = sample(&body, series).unwrap_or(0.0);
    let data = pseudo_random(1 << 20, 11);
    std::fs::write(a.path("m.bin"), &data).unwrap();
    wait_until(DEADLINE, "m.bin on b", || {
        std::fs::read(b.path("m.bin")).is_ok_and(|d| d == data)
    });
    let mut last = String::new();
    wait_until(DEADLINE, "received bytes counted in /metrics", || {
        last = scrape(addr, Some(TOKEN)).map(|r| r.2).unwrap_or_default();
        sample(&last, series).is_some_and(|v| v >= before + data.len() as f64)
    });
    let from_a = format!(
        "fleetsync_peer_received_bytes_total{{folder=\"shared\",peer=\"{}\"}}",
        a.status().expect("a's status")["short_id"]
            .as_str()
            .expect("short id")
    );
    assert!(
        sample(&last, &from_a).is_some_and(|v| v >= data.len() as f64),
        "{from_a} in:\n{last}"
    );
    // a counted what it served to b, once.
    let to_b = format!(
        "fleetsync_peer_sent_bytes_total{{peer=\"{}\"}}",
        b.status().expect("b's status")["short_id"]
            .as_str()
            .expect("short id")
    );
    let mut sent = None;
    wait_until(DEADLINE, "a's bytes sent to b in a's /metrics", || {
        sent = get(a.admin, "/metrics").and_then(|m| sample(&m, &to_b));
        sent.is_some_and(|v| v >= data.len() as f64)
    });
    assert!(
        sent.is_some_and(|v| v < 2.0 * data.len() as f64),
        "{to_b} = {sent:?} after {} bytes: counted twice?",
        data.len()
    );
    assert!(
        sample(
            &last,
            "fleetsync_folder_received_files_total{folder=\"shared\"}"
        )
        .is_some_and(|v| v >= 1.0),
        "{last}"
    );
}

/// `fleetsync run` refuses a metrics listener reachable from other
/// machines without a token: exit code 3, the key and the fix named.
#[test]
fn a_non_loopback_metrics_listener_without_a_token_is_refused() {
    let mut c = Cluster::new(1, Topology::Full, folders);
    let n = &mut c.nodes[0];
    n.extra = "\n[metrics]\nlisten = \"0.0.0.0:0\"\n".into();
    n.write_config();
    let child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&n.config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fleetsync");
    // Killed on drop: should the config be accepted, the node must not
    // outlive the test.
    let mut child = KillOnDrop(child);
    let mut status = None;
    wait_until(
        Duration::from_secs(30),
        "fleetsync run to refuse the config",
        || {
            status = child.0.try_wait().expect("try_wait");
            status.is_some()
        },
    );
    let mut err = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(EXIT_CONFIG), "{err}");
    assert!(err.contains("metrics.listen"), "{err}");
    assert!(err.contains("bearer_token_file"), "{err}");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Already gone when the config was refused: nothing to report.
        self.0.kill().ok();
        self.0.wait().ok();
    }
}
