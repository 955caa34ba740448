//! The CLI's client for the local admin API: HTTP/1.1 through `hyper`'s
//! connection API, over the loopback TCP address or the Unix socket. One
//! request per connection; each call runs on a small current-thread
//! runtime of its own (the CLI is synchronous).

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use http_body_util::{BodyExt as _, Empty};
use hyper::{body::Bytes, header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Where the admin API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `admin.listen` (loopback).
    Tcp(SocketAddr),
    /// `admin.socket`.
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Unix(p) => write!(f, "socket {}", p.display()),
        }
    }
}

/// The node cannot be asked: not running, or this user may not use its
/// socket. Both say what to do.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    #[error("no fleetsync node answers on {at} ({why}); is it running? start it with: fleetsync run --config FILE")]
    NotRunning { at: Endpoint, why: String },
    #[error(
        "not allowed to use the admin socket {} ({why}); only the node's user and members of \
         the socket's group (gid {gid}) may: add this user to that group (usermod -aG \
         $(stat -c %G {}) $USER, then log in again), or run as the node's user",
        path.display(),
        path.display()
    )]
    Denied {
        path: PathBuf,
        gid: u32,
        why: String,
    },
}

/// Where `status`/`history` find the node: `admin.listen`, or with port 0
/// the address the running node wrote to `<data_dir>/admin.addr`.
pub fn admin_addr(config: &fleetsync_config::Config) -> anyhow::Result<SocketAddr> {
    let listen = config.admin.listen;
    if listen.port() != 0 {
        return Ok(listen);
    }
    crate::admin::read_addr_file(&config.data_dir).map_err(|e| {
        Unreachable::NotRunning {
            at: Endpoint::Tcp(listen),
            why: format!("admin.listen has port 0 and the node's address is unknown: {e}"),
        }
        .into()
    })
}

/// The config is there but this user may not read it (or the secret file
/// it names): the case the admin socket is for.
pub fn unreadable(e: &fleetsync_config::ConfigError) -> bool {
    use fleetsync_config::ConfigError;
    match e {
        ConfigError::Read { source, .. } => source.kind() == std::io::ErrorKind::PermissionDenied,
        ConfigError::Invalid { key, problem, .. } => {
            key.to_ascii_lowercase().contains("fleet_secret_file")
                && problem.contains("ermission denied")
        }
        _ => false,
    }
}

/// Where a node's socket is when nothing says: beside the config (the
/// default `<data_dir>/admin.sock` of a config in its data dir), then the
/// packaged node's runtime directory.
pub fn socket_candidates(config_path: Option<&Path>) -> Vec<PathBuf> {
    let beside = config_path
        .and_then(Path::parent)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(crate::admin::socket::FILE_NAME));
    beside
        .into_iter()
        .chain([PathBuf::from(crate::admin::socket::DEFAULT_PATH)])
        .collect()
}

/// The first of [`socket_candidates`] that is a socket.
pub fn default_socket(config_path: Option<&Path>) -> Option<PathBuf> {
    use std::os::unix::fs::FileTypeExt as _;
    socket_candidates(config_path)
        .into_iter()
        .find(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()))
}

/// How long connecting may take (a local socket: only a wedged node is
/// slower).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a reply may take: the admin API answers from memory or a
/// quick index read.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

pub fn get(at: &Endpoint, path: &str) -> anyhow::Result<String> {
    request(at, Method::GET, path, REPLY_TIMEOUT)
}

/// A POST without a body (the admin API takes its arguments in the query).
pub fn post(at: &Endpoint, path: &str) -> anyhow::Result<String> {
    request(at, Method::POST, path, REPLY_TIMEOUT)
}

/// A POST whose work may take long (a restore writes files back before it
/// answers).
pub fn post_slow(at: &Endpoint, path: &str, timeout: Duration) -> anyhow::Result<String> {
    request(at, Method::POST, path, timeout)
}

fn request(
    at: &Endpoint,
    method: Method,
    path: &str,
    reply_timeout: Duration,
) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = rt.block_on(exchange(at, method, path, reply_timeout))?;
    if status != StatusCode::OK {
        anyhow::bail!("admin API answered {}: {}", status.as_u16(), body.trim());
    }
    Ok(body)
}

/// Connect, send one request, read the whole answer.
async fn exchange(
    at: &Endpoint,
    method: Method,
    path: &str,
    reply_timeout: Duration,
) -> anyhow::Result<(StatusCode, String)> {
    let not_running = |why: String| Unreachable::NotRunning {
        at: at.clone(),
        why,
    };
    // The TCP API refuses a Host that is not its own loopback address
    // (DNS rebinding); on the socket there is no such name.
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host(at))
        .header(header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())?;
    let send = async {
        match at {
            Endpoint::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| not_running(e.to_string()))?;
                send(s, req).await
            }
            Endpoint::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(|e| socket_error(p, e))?;
                send(s, req).await
            }
        }
    };
    let connect_and_reply = CONNECT_TIMEOUT + reply_timeout;
    match tokio::time::timeout(connect_and_reply, send).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) if e.downcast_ref::<Unreachable>().is_some() => Err(e),
        Ok(Err(e)) => Err(not_running(format!("{e:#}")).into()),
        Err(_) => Err(not_running(format!(
            "no answer within {}",
            humantime::format_duration(connect_and_reply)
        ))
        .into()),
    }
}

fn host(at: &Endpoint) -> String {
    match at {
        Endpoint::Tcp(a) => a.to_string(),
        Endpoint::Unix(_) => "localhost".to_string(),
    }
}

/// A refused socket says who may use it; anything else means no node.
fn socket_error(path: &Path, e: std::io::Error) -> Unreachable {
    use std::os::unix::fs::MetadataExt as _;
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        return Unreachable::Denied {
            path: path.to_path_buf(),
            gid: std::fs::metadata(path).map_or(0, |m| m.gid()),
            why: e.to_string(),
        };
    }
    Unreachable::NotRunning {
        at: Endpoint::Unix(path.to_path_buf()),
        why: e.to_string(),
    }
}

/// One HTTP/1.1 exchange on a connected stream.
async fn send<S>(stream: S, req: Request<Empty<Bytes>>) -> anyhow::Result<(StatusCode, String)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection is driven beside the request; it ends when the
    // answer is read and the sender dropped.
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    drop(sender);
    driver.abort();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot server on a Unix socket: the request it got, the
    /// answer it sent.
    fn serve_once(path: &Path, answer: &'static str) -> std::thread::JoinHandle<String> {
        use std::io::{Read as _, Write as _};
        let l = std::os::unix::net::UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            s.write_all(answer.as_bytes()).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
    }

    #[test]
    fn get_over_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.sock");
        let server = serve_once(
            &p,
            "HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\n{\"a\":1}",
        );
        let body = get(&Endpoint::Unix(p), "/status?x=1").unwrap();
        assert_eq!(body, "{\"a\":1}");
        let req = server.join().unwrap();
        assert!(req.starts_with("GET /status?x=1 HTTP/1.1\r\n"), "{req}");
        assert!(
            req.to_ascii_lowercase().contains("host: localhost"),
            "{req}"
        );
    }

    #[test]
    fn an_error_status_carries_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.sock");
        let server = serve_once(
            &p,
            "HTTP/1.1 404 Not Found\r\ncontent-length: 15\r\n\r\nno folder \"x\"\n\n",
        );
        let e = post(&Endpoint::Unix(p), "/folders/x/pause").unwrap_err();
        assert_eq!(e.to_string(), "admin API answered 404: no folder \"x\"");
        server.join().unwrap();
    }

    #[test]
    fn nothing_listening_says_start_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let e = get(&Endpoint::Unix(dir.path().join("none.sock")), "/status").unwrap_err();
        let u = e.downcast_ref::<Unreachable>().expect("Unreachable");
        assert!(matches!(u, Unreachable::NotRunning { .. }), "{u}");
        assert!(u.to_string().contains("fleetsync run --config"), "{u}");
        // A closed loopback port: the same advice.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = get(&Endpoint::Tcp(port), "/status").unwrap_err();
        assert!(e.to_string().contains("is it running?"), "{e}");
    }
}
