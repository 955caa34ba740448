//! A minimal HTTP/1.0 client for the local admin API. The API only ever
//! listens on loopback and answers small JSON documents, so a plain TCP
//! exchange is all that is needed (no HTTP client stack in the CLI).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

#[derive(Debug, thiserror::Error)]
#[error("no fleetsync node answers on {addr} ({why}); is it running? start it with: fleetsync run --config FILE")]
pub struct Unreachable {
    pub addr: SocketAddr,
    pub why: String,
}

/// Where `status`/`history` find the node: `admin.listen`, or with port 0
/// the address the running node wrote to `<data_dir>/admin.addr`.
pub fn admin_addr(config: &fleetsync_config::Config) -> anyhow::Result<SocketAddr> {
    let listen = config.admin.listen;
    if listen.port() != 0 {
        return Ok(listen);
    }
    crate::admin::read_addr_file(&config.data_dir).map_err(|e| {
        Unreachable {
            addr: listen,
            why: format!("admin.listen has port 0 and the node's address is unknown: {e}"),
        }
        .into()
    })
}

/// How long a reply may take to start: the admin API answers from memory
/// or a quick index read.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

pub fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    request(addr, "GET", path, REPLY_TIMEOUT)
}

/// A POST without a body (the admin API takes its arguments in the query).
pub fn post(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    request(addr, "POST", path, REPLY_TIMEOUT)
}

/// A POST whose work may take long (a restore writes files back before it
/// answers).
pub fn post_slow(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<String> {
    request(addr, "POST", path, timeout)
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    reply_timeout: Duration,
) -> anyhow::Result<String> {
    let unreachable = |why: String| Unreachable { addr, why };
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| unreachable(e.to_string()))?;
    s.set_read_timeout(Some(reply_timeout))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| unreachable(e.to_string()))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("malformed reply from admin API"))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .unwrap_or(0);
    if status != 200 {
        anyhow::bail!("admin API answered {status}: {}", body.trim());
    }
    Ok(body.to_string())
}
