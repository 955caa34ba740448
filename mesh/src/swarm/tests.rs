//! The piece rules with explicit bitfields and times.

use super::*;

fn id(n: u8) -> EndpointId {
    iroh::SecretKey::from_bytes(&[n; 32]).public()
}

fn all() -> ChunkRanges {
    ChunkRanges::all()
}

/// The chunk ranges of pieces `from..to`.
fn pieces(size: u64, from: usize, to: usize) -> ChunkRanges {
    (from..to).fold(ChunkRanges::empty(), |acc, i| acc | piece_ranges(size, i))
}

const SIZE: u64 = 10 * PIECE_BYTES + 5;

#[test]
fn a_blob_is_cut_into_whole_pieces_and_a_short_last_one() {
    let p = Pieces::new(SIZE, &ChunkRanges::empty(), None, 1);
    assert_eq!(p.remaining(), 11);
    let last = piece_ranges(SIZE, 10);
    assert_eq!(
        last,
        ChunkRanges::from(bao_tree::ChunkNum(10 * 1024)..bao_tree::ChunkNum(10 * 1024 + 1))
    );
    // What is here already is not fetched again.
    let p = Pieces::new(SIZE, &pieces(SIZE, 0, 4), None, 1);
    assert_eq!(p.remaining(), 7);
    let p = Pieces::new(SIZE, &all(), None, 1);
    assert!(p.is_done());
}

#[test]
fn one_provider_is_asked_for_everything_a_few_pieces_at_a_time() {
    let now = Instant::now();
    let mut p = Pieces::new(SIZE, &ChunkRanges::empty(), Some(id(1)), 7);
    p.saw(id(1), all());
    let mut asked = Vec::new();
    while let Some((peer, piece, _)) = p.next(now) {
        assert_eq!(peer, id(1));
        asked.push(piece);
    }
    assert_eq!(
        asked.len(),
        PER_PROVIDER,
        "at most {PER_PROVIDER} in flight"
    );
    for piece in asked {
        p.finished(id(1), piece);
    }
    let mut n = 0;
    while !p.is_done() {
        let (_, piece, _) = p.next(now).expect("more to ask");
        p.finished(id(1), piece);
        n += 1;
    }
    assert_eq!(n, 11 - PER_PROVIDER);
}

#[test]
fn two_full_providers_share_the_pieces() {
    let now = Instant::now();
    let mut p = Pieces::new(SIZE, &ChunkRanges::empty(), None, 3);
    p.saw(id(1), all());
    p.saw(id(2), all());
    let asked: Vec<EndpointId> =
        std::iter::from_fn(|| p.next(now).map(|(peer, _, _)| peer)).collect();
    assert_eq!(asked.len(), 2 * PER_PROVIDER);
    assert_eq!(asked.iter().filter(|a| **a == id(1)).count(), PER_PROVIDER);
}

#[test]
fn the_announcer_is_asked_for_pieces_nobody_else_has_not_for_what_others_give() {
    let now = Instant::now();
    let origin = id(1);
    let mut p = Pieces::new(SIZE, &ChunkRanges::empty(), Some(origin), 5);
    p.saw(origin, all());
    // Another receiver has pieces 0..6 already.
    p.saw(id(2), pieces(SIZE, 0, 6));
    let mut from_origin = Vec::new();
    while let Some((peer, piece, _)) = p.next(now) {
        if peer == origin {
            from_origin.push(piece);
        } else {
            assert!(piece < 6, "the receiver has only 0..6, asked for {piece}");
        }
    }
    assert!(!from_origin.is_empty());
    assert!(
        from_origin.iter().all(|piece| *piece >= 6),
        "the origin was asked for a piece the other receiver has: {from_origin:?}"
    );
}

#[test]
fn a_second_full_provider_takes_pieces_and_the_announcer_the_overflow() {
    let now = Instant::now();
    let origin = id(1);
    let mut p = Pieces::new(SIZE, &ChunkRanges::empty(), Some(origin), 5);
    p.saw(origin, all());
    p.saw(id(2), all());
    let asked: Vec<EndpointId> =
        std::iter::from_fn(|| p.next(now).map(|(peer, _, _)| peer)).collect();
    assert_eq!(
        &asked[..PER_PROVIDER],
        &[id(2); PER_PROVIDER],
        "the other one first"
    );
    assert_eq!(asked.len(), 2 * PER_PROVIDER, "then the announcer too");
}

#[test]
fn the_rarest_piece_goes_first() {
    let now = Instant::now();
    let mut p = Pieces::new(SIZE, &ChunkRanges::empty(), None, 9);
    // Piece 3 only on id(2); everything on id(1) and id(3).
    p.saw(id(1), pieces(SIZE, 0, 3) | pieces(SIZE, 4, 11));
    p.saw(id(3), pieces(SIZE, 0, 3) | pieces(SIZE, 4, 11));
    p.saw(id(2), pieces(SIZE, 3, 4));
    let (peer, piece, _) = p.next(now).unwrap();
    assert_eq!((peer, piece), (id(2), 3));
}

#[test]
fn receivers_with_other_seeds_start_on_other_pieces() {
    let now = Instant::now();
    let first = |seed| {
        let mut p = Pieces::new(100 * PIECE_BYTES, &ChunkRanges::empty(), Some(id(1)), seed);
        p.saw(id(1), all());
        p.next(now).unwrap().1
    };
    let starts: std::collections::BTreeSet<usize> =
        (1..=7u64).map(|s| first(s * 0x9E37_79B9)).collect();
    assert!(starts.len() >= 5, "7 receivers start on {starts:?}");
}

#[test]
fn a_failed_piece_goes_back_and_its_provider_rests() {
    let now = Instant::now();
    let mut p = Pieces::new(2 * PIECE_BYTES, &ChunkRanges::empty(), None, 1);
    p.saw(id(1), all());
    let (_, a, _) = p.next(now).unwrap();
    let (_, b, _) = p.next(now).unwrap();
    assert!(p.next(now).is_none(), "both pieces in flight");
    p.failed(id(1), a, now);
    assert!(p.next(now).is_none(), "the only provider rests");
    assert_eq!(p.next_rest_end(now), Some(now + PROVIDER_REST));
    let later = now + PROVIDER_REST;
    let (_, again, _) = p.next(later).unwrap();
    assert_eq!(again, a);
    p.finished(id(1), again);
    p.finished(id(1), b);
    assert!(p.is_done());
}

#[test]
fn a_provider_that_has_nothing_or_is_lost_is_not_asked_and_the_fetch_can_end() {
    let now = Instant::now();
    let mut p = Pieces::new(SIZE, &ChunkRanges::empty(), None, 1);
    p.saw_nothing_yet(id(1));
    assert!(p.next(now).is_none());
    assert!(p.anyone_may_give(), "it has not answered yet");
    p.saw(id(1), ChunkRanges::empty());
    assert!(!p.anyone_may_give());
    p.saw(id(2), pieces(SIZE, 0, 2));
    assert!(p.anyone_may_give());
    p.lost(id(2));
    assert!(!p.anyone_may_give());
}

#[test]
fn a_provider_that_keeps_failing_is_dropped_and_the_others_finish() {
    let mut now = Instant::now();
    let mut p = Pieces::new(2 * PIECE_BYTES, &ChunkRanges::empty(), None, 1);
    p.saw(id(1), all());
    for n in 1..=PROVIDER_MAX_FAILURES {
        let (peer, piece, _) = p.next(now).expect("asked again after its rest");
        assert_eq!(peer, id(1));
        assert_eq!(p.failed(peer, piece, now), n == PROVIDER_MAX_FAILURES);
        now += PROVIDER_REST;
    }
    assert!(
        p.next(now).is_none(),
        "asked after {PROVIDER_MAX_FAILURES} failures"
    );
    assert!(!p.anyone_may_give());
    // A new bitfield from it changes nothing; another member finishes.
    p.saw(id(1), all());
    assert!(p.next(now).is_none());
    p.saw(id(2), all());
    let (peer, _, _) = p.next(now).unwrap();
    assert_eq!(peer, id(2));
}
