//! Length-prefixed, size-capped postcard frames, zstd-compressed when large.
//!
//! ```text
//! frame := len:u32be  flags:u8  payload[len-1]
//! flags bit 0 = payload is zstd(postcard(msg)), else postcard(msg)
//! ```
//!
//! Both caps (bytes on the wire, bytes after decompression) are checked
//! before allocating, so a hostile peer cannot make us buffer more than the
//! caller's limit.

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Default cap on one frame as it crosses the wire.
pub const MAX_FRAME: usize = 8 << 20;
/// Default cap on one frame after decompression.
pub const MAX_DECODED: usize = 32 << 20;
/// Payloads larger than this are worth compressing (index batches).
pub const COMPRESS_OVER: usize = 4 << 10;
const FLAG_ZSTD: u8 = 1;
/// zstd's default level: index batches compress well already, and a
/// higher level would cost the sender CPU on every batch.
const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {size} bytes exceeds the {limit} byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("empty frame")]
    Empty,
    #[error("unknown frame flags {0:#x}")]
    Flags(u8),
    #[error("zstd: {0}")]
    Decompress(std::io::Error),
    #[error("malformed message: {0}")]
    Decode(#[from] postcard::Error),
    #[error("stream ended in the middle of a frame")]
    Truncated,
}

/// Limits for one reader: the handshake uses tiny ones, index streams the defaults.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_frame: usize,
    pub max_decoded: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: MAX_FRAME,
            max_decoded: MAX_DECODED,
        }
    }
}

/// Encode a message into one frame (header included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let raw = postcard::to_stdvec(msg)?;
    let (flags, payload) = if raw.len() > COMPRESS_OVER {
        let z = zstd::bulk::compress(&raw, ZSTD_LEVEL).map_err(CodecError::Io)?;
        if z.len() < raw.len() {
            (FLAG_ZSTD, z)
        } else {
            (0, raw)
        }
    } else {
        (0, raw)
    };
    let len = payload.len() + 1;
    if len > MAX_FRAME {
        return Err(CodecError::TooLarge {
            size: len,
            limit: MAX_FRAME,
        });
    }
    let mut out = Vec::with_capacity(len + 4);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Write one message; returns the bytes put on the wire.
pub async fn write_msg<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<usize, CodecError> {
    let frame = encode(msg)?;
    w.write_all(&frame).await?;
    Ok(frame.len())
}

/// Read one message. `Ok(None)` is a clean end of stream between frames.
pub async fn read_msg<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    limits: Limits,
) -> Result<Option<(T, usize)>, CodecError> {
    let mut len_buf = [0u8; 4];
    // Distinguish "no more frames" from "frame cut short".
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len_buf[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(CodecError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len_buf) as usize;
    if len == 0 {
        return Err(CodecError::Empty);
    }
    if len > limits.max_frame {
        return Err(CodecError::TooLarge {
            size: len,
            limit: limits.max_frame,
        });
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            CodecError::Truncated
        } else {
            CodecError::Io(e)
        }
    })?;
    let msg = decode_body(&buf, limits)?;
    Ok(Some((msg, len + 4)))
}

fn decode_body<T: DeserializeOwned>(buf: &[u8], limits: Limits) -> Result<T, CodecError> {
    let flags = buf[0];
    let payload = &buf[1..];
    match flags {
        0 => Ok(postcard::from_bytes(payload)?),
        FLAG_ZSTD => {
            // The frame header of zstd records the content size; refuse
            // bombs before allocating, and cap the output regardless.
            if let Ok(Some(n)) = zstd::zstd_safe::get_frame_content_size(payload) {
                if n as usize > limits.max_decoded {
                    return Err(CodecError::TooLarge {
                        size: n as usize,
                        limit: limits.max_decoded,
                    });
                }
            }
            let raw = zstd::bulk::decompress(payload, limits.max_decoded)
                .map_err(CodecError::Decompress)?;
            Ok(postcard::from_bytes(&raw)?)
        }
        f => Err(CodecError::Flags(f)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Small(u32),
        Big(Vec<String>),
    }

    #[tokio::test]
    async fn roundtrip_small_and_compressed() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let big = Msg::Big((0..5000).map(|i| format!("dir/file-{i}.txt")).collect());
        let n1 = write_msg(&mut a, &Msg::Small(7)).await.unwrap();
        let n2 = write_msg(&mut a, &big).await.unwrap();
        drop(a);
        let (m1, r1): (Msg, _) = read_msg(&mut b, Limits::default()).await.unwrap().unwrap();
        let (m2, r2): (Msg, _) = read_msg(&mut b, Limits::default()).await.unwrap().unwrap();
        assert_eq!(m1, Msg::Small(7));
        assert_eq!(m2, big);
        assert_eq!((n1, n2), (r1, r2));
        assert!(n2 < 5000 * 10, "large batch was not compressed: {n2} bytes");
        assert!(read_msg::<_, Msg>(&mut b, Limits::default())
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn oversized_frame_is_rejected_before_reading_it() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
        let err = read_msg::<_, Msg>(&mut b, Limits::default())
            .await
            .unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn garbage_and_truncation_are_errors_not_panics() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0, 0, 5, 0, 0xff, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        a.write_all(&[0, 0, 0, 9, 0, 1]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_msg::<_, Msg>(&mut b, Limits::default()).await,
            Err(CodecError::Decode(_))
        ));
        assert!(matches!(
            read_msg::<_, Msg>(&mut b, Limits::default()).await,
            Err(CodecError::Truncated)
        ));
    }

    #[tokio::test]
    async fn zstd_bomb_is_capped() {
        let raw = postcard::to_stdvec(&Msg::Big(vec!["a".repeat(1 << 20); 4])).unwrap();
        let z = zstd::bulk::compress(&raw, ZSTD_LEVEL).unwrap();
        let mut frame = ((z.len() + 1) as u32).to_be_bytes().to_vec();
        frame.push(FLAG_ZSTD);
        frame.extend_from_slice(&z);
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        a.write_all(&frame).await.unwrap();
        let limits = Limits {
            max_frame: MAX_FRAME,
            max_decoded: 1 << 20,
        };
        let err = read_msg::<_, Msg>(&mut b, limits).await.unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { .. }), "{err}");
    }
}
