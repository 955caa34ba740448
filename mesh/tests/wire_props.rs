//! Property tests (issue 10): every message a peer can send is decoded from
//! arbitrary bytes without a panic and without allocating beyond the
//! codec's caps, and [`FileEntry::validate`] never panics and accepts only
//! entries within the model's caps. A fixed case budget keeps CI fast.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    collections::BTreeMap,
};

use fleetsync_mesh::{
    auth::HANDSHAKE_LIMITS,
    codec::{read_msg, Limits},
    exchange::{accept_hints, Control, CONTROL_LIMITS},
    index_stream::{IndexRequest, IndexResponse, REQUEST_LIMITS},
    model::{
        EntryKind, FileEntry, ShortId, VersionVector, MAX_COUNTER, MAX_FILE_SIZE, MAX_VECTOR_LEN,
    },
    proto::Handshake,
    ticket::FleetTicket,
    SecretKey,
};
use proptest::prelude::*;
use serde::de::DeserializeOwned;

// ------------------------------------------------ allocation accounting

/// The system allocator, noting per thread the bytes live and the peak
/// since the last [`Peak::start`], so a decode's allocations are measured
/// even with tests running side by side.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    // `try_with`: the thread-locals may be gone while a thread exits.
    let _ = LIVE.try_with(|l| {
        let now = l.get().saturating_add(size);
        l.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

fn note_free(size: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(size)));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_free(layout.size());
        note_alloc(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes allocated at most while running `f`, above what was live before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get) - base)
}

// ------------------------------------------------------------ decoding

/// Decode `bytes` as a stream of `T` frames under `limits`, as a peer's
/// stream is read, until the end or the first error. Returns the peak
/// allocation while doing so.
fn decode_all<T: DeserializeOwned>(bytes: &[u8], limits: Limits) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let ((), peak) = peak_during(|| {
        rt.block_on(async {
            let mut r = bytes;
            while let Ok(Some(_)) = read_msg::<_, T>(&mut r, limits).await {}
        })
    });
    peak
}

/// The most a decode may allocate: a frame, a decompression buffer (zstd
/// frames only), and the decoded value, which postcard cannot make much
/// larger than its input (serde preallocates "cautiously", ≤ 1 MiB).
fn budget(limits: Limits, input: usize) -> usize {
    limits.max_frame.min(input) + limits.max_decoded + (2 << 20) + 256 * input
}

/// A frame with a well-formed header around `payload` (optionally
/// zstd-compressed), so decoding reaches postcard and the message types.
fn framed(payload: &[u8], zstd: bool) -> Vec<u8> {
    let body = if zstd {
        zstd::bulk::compress(payload, 3).unwrap()
    } else {
        payload.to_vec()
    };
    let mut out = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(u8::from(zstd));
    out.extend_from_slice(&body);
    out
}

/// Decodes bytes as one message type under limits; returns the peak
/// allocation.
type Decoder = fn(&[u8], Limits) -> usize;

fn check_all_messages(bytes: &[u8]) {
    let cases: [(&str, Limits, Decoder); 4] = [
        ("IndexRequest", REQUEST_LIMITS, decode_all::<IndexRequest>),
        (
            "IndexResponse",
            Limits::default(),
            decode_all::<IndexResponse>,
        ),
        ("Handshake", HANDSHAKE_LIMITS, decode_all::<Handshake>),
        ("Control", CONTROL_LIMITS, decode_all::<Control>),
    ];
    for (name, limits, decode) in cases {
        let peak = decode(bytes, limits);
        let most = budget(limits, bytes.len());
        assert!(
            peak <= most,
            "{name}: {peak} bytes allocated, budget {most}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_decode_as_every_wire_message_without_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        check_all_messages(&bytes);
    }

    #[test]
    fn arbitrary_payloads_in_well_formed_frames_decode_without_panic(
        payload in proptest::collection::vec(any::<u8>(), 0..4096),
        zstd in any::<bool>(),
    ) {
        check_all_messages(&framed(&payload, zstd));
    }

    /// Payloads that start like real messages go deeper than random bytes:
    /// a valid variant tag and then huge length prefixes and garbage.
    #[test]
    fn length_prefix_bombs_stay_within_the_caps(
        tag in 0u8..8,
        lens in proptest::collection::vec(any::<u32>(), 1..8),
        tail in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut payload = vec![tag];
        for l in lens {
            let mut l = l as u64 | (1 << 28);
            // postcard varint
            while l >= 0x80 {
                payload.push((l as u8) | 0x80);
                l >>= 7;
            }
            payload.push(l as u8);
        }
        payload.extend_from_slice(&tail);
        check_all_messages(&framed(&payload, false));
    }

    #[test]
    fn arbitrary_strings_parse_as_tickets_without_panic(
        s in "(fleetsync)?[a-z2-7]{0,600}",
        junk in ".{0,64}",
    ) {
        let _ = FleetTicket::parse(&s);
        let _ = FleetTicket::parse(&junk);
        let _ = FleetTicket::parse(&format!("{s}{junk}"));
    }

    /// Any decoded peer list passes through `accept_hints` without panic
    /// and what it accepts is within the exchange's caps.
    #[test]
    fn arbitrary_peer_lists_are_checked_without_panic(
        payload in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let me = SecretKey::from_bytes(&[1; 32]).public();
        let from = SecretKey::from_bytes(&[2; 32]).public();
        if let Ok(Control::Peers { peers }) = postcard::from_bytes::<Control>(&payload) {
            if let Ok(ok) = accept_hints(peers, me, from) {
                prop_assert!(ok.len() <= fleetsync_mesh::exchange::MAX_HINTS);
            }
        }
    }

    #[test]
    fn validate_never_panics_and_accepts_only_entries_within_the_caps(e in file_entry()) {
        if e.validate().is_ok() {
            prop_assert!(!e.version.is_empty());
            prop_assert!(e.version.len() <= MAX_VECTOR_LEN);
            prop_assert!(e.version.iter().all(|(_, c)| (1..=MAX_COUNTER).contains(&c)));
            prop_assert!(e.size <= MAX_FILE_SIZE);
            prop_assert!(fleetsync_mesh::model::validate_rel_path(&e.path).is_ok());
            // The headroom the caps promise: a local change on top of an
            // accepted entry is recorded (or refused), never wrapped.
            if let Ok(next) = e.version.bump(ShortId(7)) {
                prop_assert!(next.get(ShortId(7)) > e.version.get(ShortId(7)));
            }
        }
    }

    /// Entries decoded from arbitrary bytes (postcard) validate without
    /// panic too: the decoder can produce what the strategy above cannot.
    #[test]
    fn decoded_arbitrary_entries_validate_without_panic(
        payload in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        if let Ok(e) = postcard::from_bytes::<FileEntry>(&payload) {
            if e.validate().is_ok() {
                prop_assert!(e.version.len() <= MAX_VECTOR_LEN);
                prop_assert!(e.size <= MAX_FILE_SIZE);
            }
        }
    }
}

// ------------------------------------------------------------ entries

fn counter() -> impl Strategy<Value = u64> {
    prop_oneof![
        1u64..10,
        Just(0u64),
        Just(MAX_COUNTER),
        Just(MAX_COUNTER + 1),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

fn vector() -> impl Strategy<Value = VersionVector> {
    prop_oneof![
        proptest::collection::btree_map(any::<u64>(), counter(), 0..8),
        // Around the length cap.
        (MAX_VECTOR_LEN - 1..MAX_VECTOR_LEN + 2)
            .prop_map(|n| (1..=n as u64).map(|i| (i, 1)).collect::<BTreeMap<_, _>>()),
    ]
    .prop_map(|m| {
        // Through the wire format, so zero counters (which `from_pairs`
        // would drop) reach validate as a peer could send them.
        let pairs: Vec<(ShortId, u64)> = m.into_iter().map(|(k, v)| (ShortId(k), v)).collect();
        let map: BTreeMap<ShortId, u64> = pairs.into_iter().collect();
        postcard::from_bytes(&postcard::to_stdvec(&map).unwrap()).unwrap()
    })
}

fn file_entry() -> impl Strategy<Value = FileEntry> {
    let kind = prop_oneof![
        Just(EntryKind::File),
        Just(EntryKind::Directory),
        Just(EntryKind::Symlink)
    ];
    let size = prop_oneof![
        0u64..1 << 20,
        Just(MAX_FILE_SIZE),
        Just(MAX_FILE_SIZE + 1),
        any::<u64>()
    ];
    (
        (
            "[a-z./\\\\\u{0}-\u{1f}]{0,12}",
            kind,
            size,
            any::<i64>(),
            any::<u32>(),
        ),
        (
            proptest::option::of(any::<[u8; 32]>()),
            proptest::option::of(".{0,8}"),
            any::<bool>(),
            vector(),
            any::<u64>(),
            any::<u64>(),
        ),
    )
        .prop_map(
            |((path, kind, size, mtime_ns, mode), (hash, target, deleted, version, by, seq))| {
                FileEntry {
                    path,
                    kind,
                    size,
                    mtime_ns,
                    mode,
                    hash,
                    symlink_target: target,
                    deleted,
                    version,
                    modified_by: ShortId(by),
                    sequence: seq,
                }
            },
        )
}
