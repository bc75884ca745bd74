//! Tile paths and ranges of tiled transparency logs (<https://c2sp.org/tlog-tiles>).
//!
//! A tiled log serves its Merkle tree as *tiles*: runs of up to 256 consecutive
//! hashes of one level, at `<prefix>/tile/<L>/<N>[.p/<W>]`.
//!
//! - A level-0 tile holds leaf hashes: tile `N` holds the hashes of leaves
//!   `N*256 .. N*256 + 256`.
//! - A level-`L` tile holds *level-`L` hashes*: the `k`-th level-`L` hash is the
//!   Merkle Tree Hash of the perfect subtree of height `8*L` (`256^L` leaves)
//!   covering leaves `k*256^L .. (k+1)*256^L`. Tile `N` holds the level-`L` hashes
//!   `N*256 .. N*256 + 256`, so it spans leaves `N*256^(L+1) .. (N+1)*256^(L+1)`,
//!   and each of its hashes is the root of one full tile of the level below.
//! - The rightmost tile of a level is usually *partial*: `W` hashes, `1 <= W < 256`,
//!   served with a `.p/<W>` suffix. A tree of size `s` has `floor(s / 256^L) mod 256`
//!   hashes in its partial level-`L` tile ([`tile_width`]).
//!
//! The tile index `N` is written as 3-digit groups, every group but the last
//! prefixed with `x`: 1234067 is `x001/x234/067`. Entry bundles
//! (`tile/entries/…`) are not handled here.

/// Tree levels per tile level: a tile is a subtree of height 8.
pub const TILE_HEIGHT: u8 = 8;

/// Hashes in a full tile: `2^TILE_HEIGHT`.
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;

/// The highest tile level the spec allows in a path.
pub const MAX_LEVEL: u8 = 63;

/// A tile path that [`parse_tile_path`] does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TileError {
    /// The path is not a canonical tile path; says what is wrong with it.
    #[error("malformed tile path {path:?}: {reason}")]
    Malformed {
        /// The path given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The path of a tile, relative to the log's prefix: `tile/<level>/<index>` for a
/// full tile, `tile/<level>/<index>.p/<width>` for a partial one, e.g.
/// `tile_path(0, 1234067, Some(8))` is `"tile/0/x001/x234/067.p/8"`.
///
/// `partial_width` is the number of hashes of a partial tile, from 1 to 255;
/// `None`, or `Some(256)`, is a full tile. A level above [`MAX_LEVEL`] or a width of
/// 0 (no such tile is ever served) gives a path [`parse_tile_path`] rejects.
pub fn tile_path(level: u8, index: u64, partial_width: Option<u64>) -> String {
    let suffix = match partial_width {
        Some(width) if width < TILE_WIDTH => format!(".p/{width}"),
        _ => String::new(),
    };
    format!("tile/{level}/{}{suffix}", encode_index(index))
}

/// Writes a tile index as 3-digit groups, most significant first, every group but
/// the last prefixed with `x`.
fn encode_index(index: u64) -> String {
    let mut groups = vec![index % 1000];
    let mut rest = index / 1000;
    while rest > 0 {
        groups.push(rest % 1000);
        rest /= 1000;
    }
    let last = groups.len() - 1;
    groups
        .iter()
        .rev()
        .enumerate()
        .map(|(i, group)| {
            if i < last {
                format!("x{group:03}")
            } else {
                format!("{group:03}")
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A decimal number in canonical form: ASCII digits, no sign, no leading zero
/// unless it is `0`.
fn parse_canonical_decimal(digits: &str) -> Option<u64> {
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if canonical {
        digits.parse().ok()
    } else {
        None
    }
}

/// Exactly three ASCII digits.
fn parse_group(group: &str) -> Option<u64> {
    if group.len() == 3 && group.bytes().all(|b| b.is_ascii_digit()) {
        group.parse().ok()
    } else {
        None
    }
}

/// Parses a tile path relative to the log's prefix, such as
/// `tile/0/x001/x234/067.p/8`, into `(level, index, partial width)`.
///
/// Strict: only the canonical form [`tile_path`] writes is accepted. The level is
/// 0 to 63 without leading zeros; the index groups are three digits, all but the
/// last with an `x`, and the first is not `x000`; a partial width is 1 to 255
/// without leading zeros.
///
/// # Errors
///
/// [`TileError::Malformed`] saying what is wrong.
pub fn parse_tile_path(path: &str) -> Result<(u8, u64, Option<u64>), TileError> {
    let malformed = |reason| TileError::Malformed {
        path: path.to_owned(),
        reason,
    };
    let rest = path
        .strip_prefix("tile/")
        .ok_or_else(|| malformed("it does not start with \"tile/\""))?;
    let (level, rest) = rest
        .split_once('/')
        .ok_or_else(|| malformed("it has no tile index"))?;
    let level = parse_canonical_decimal(level)
        .and_then(|level| u8::try_from(level).ok())
        .filter(|&level| level <= MAX_LEVEL)
        .ok_or_else(|| malformed("the level is not a decimal number from 0 to 63"))?;

    let (index, width) = match rest.split_once(".p/") {
        Some((index, width)) => {
            let width = parse_canonical_decimal(width)
                .filter(|width| (1..TILE_WIDTH).contains(width))
                .ok_or_else(|| {
                    malformed("the partial width is not a decimal number from 1 to 255")
                })?;
            (index, Some(width))
        }
        None => (rest, None),
    };

    let groups: Vec<&str> = index.split('/').collect();
    let Some((last, leading)) = groups.split_last() else {
        return Err(malformed("it has no tile index"));
    };
    let mut value: u64 = 0;
    for (position, group) in leading.iter().enumerate() {
        let digits = group
            .strip_prefix('x')
            .and_then(parse_group)
            .ok_or_else(|| {
                malformed("an index element other than the last is not x and three digits")
            })?;
        if position == 0 && digits == 0 {
            return Err(malformed("the index has a leading x000 element"));
        }
        value = value
            .checked_mul(1000)
            .and_then(|value| value.checked_add(digits))
            .ok_or_else(|| malformed("the index does not fit in 64 bits"))?;
    }
    let digits =
        parse_group(last).ok_or_else(|| malformed("the last index element is not three digits"))?;
    let index = value
        .checked_mul(1000)
        .and_then(|value| value.checked_add(digits))
        .ok_or_else(|| malformed("the index does not fit in 64 bits"))?;
    Ok((level, index, width))
}

/// Which level-`level` hashes tile `index` of that level holds when it has `width`
/// hashes (256 for a full tile): the half-open range `(start, end)` of their
/// indexes among the level's hashes, `(index*256, index*256 + width)`.
///
/// The `k`-th level-`L` hash is the root of the perfect subtree of height `8*L`
/// covering leaves `k*256^L .. (k+1)*256^L`, so the tile's hashes together cover
/// leaves from `index*256^(L+1)` on ([`tile_leaf_range`] gives that range). The
/// range of indexes itself does not depend on the level.
///
/// No tree of at most `u64::MAX` leaves has a tile index of `2^56` or more; for
/// such indexes the result saturates at `u64::MAX`.
pub fn tile_hash_range(level: u8, index: u64, width: u64) -> (u64, u64) {
    debug_assert!(
        level <= MAX_LEVEL,
        "tile level {level} is above {MAX_LEVEL}"
    );
    let start = index.saturating_mul(TILE_WIDTH);
    (start, start.saturating_add(width))
}

/// The leaves that tile `index` of level `level` covers when it has `width` hashes:
/// `(index*256^(L+1), index*256^(L+1) + width*256^L)`, or `None` if that range
/// does not fit in 64 bits (a full tile of level 7 or more, for instance).
pub fn tile_leaf_range(level: u8, index: u64, width: u64) -> Option<(u64, u64)> {
    let leaves_per_hash = TILE_WIDTH.checked_pow(u32::from(level))?;
    let start = index
        .checked_mul(TILE_WIDTH)?
        .checked_mul(leaves_per_hash)?;
    let end = start.checked_add(width.checked_mul(leaves_per_hash)?)?;
    Some((start, end))
}

/// How many hashes tile `index` of level `level` has in a tree of `tree_size`
/// leaves: `Some(256)` for a full tile, `Some(w)` with `1 <= w < 256` for the
/// partial tile at the right edge, `None` for a tile that does not exist at that
/// size (past the edge, or empty).
pub fn tile_width(level: u8, index: u64, tree_size: u64) -> Option<u64> {
    // The complete level-`level` hashes the tree has: one per 256^level leaves.
    let hashes = match TILE_WIDTH.checked_pow(u32::from(level)) {
        Some(leaves_per_hash) => tree_size / leaves_per_hash,
        // 256^level leaves are more than a tree can have.
        None => 0,
    };
    let full_tiles = hashes / TILE_WIDTH;
    let partial = hashes % TILE_WIDTH;
    if index < full_tiles {
        Some(TILE_WIDTH)
    } else if index == full_tiles && partial > 0 {
        Some(partial)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_spec_example() {
        // c2sp.org/tlog-tiles: "index 1234067 will be encoded as x001/x234/067".
        assert_eq!(tile_path(0, 1_234_067, None), "tile/0/x001/x234/067");
        assert_eq!(tile_path(0, 1_234_067, Some(8)), "tile/0/x001/x234/067.p/8");
        assert_eq!(
            parse_tile_path("tile/0/x001/x234/067.p/8"),
            Ok((0, 1_234_067, Some(8)))
        );
        assert_eq!(
            parse_tile_path("tile/0/x001/x234/067"),
            Ok((0, 1_234_067, None))
        );
    }

    #[test]
    fn paths_adapted_from_go_sumdb() {
        // golang.org/x/mod sumdb/tlog tlog_test.go (tilePaths), whose paths carry
        // an extra tile-height element ("tile/H/L/N"); here without it.
        let cases = [
            ("tile/0/001", (0, 1, None)),
            ("tile/0/001.p/5", (0, 1, Some(5))),
            ("tile/5/x123/x456/078", (5, 123_456_078, None)),
            ("tile/5/x123/x456/078.p/2", (5, 123_456_078, Some(2))),
            ("tile/0/x003/x057/500", (0, 3_057_500, None)),
        ];
        for (path, (level, index, width)) in cases {
            assert_eq!(tile_path(level, index, width), path);
            assert_eq!(parse_tile_path(path), Ok((level, index, width)), "{path}");
        }
        for bad in ["tile/5/123/456/078", "tile/-1/123/456/078"] {
            assert!(parse_tile_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn index_encoding() {
        let cases = [
            (0, "000"),
            (7, "007"),
            (999, "999"),
            (1000, "x001/000"),
            (1001, "x001/001"),
            (999_999, "x999/999"),
            (1_000_000, "x001/x000/000"),
            (u64::MAX, "x018/x446/x744/x073/x709/x551/615"),
        ];
        for (index, encoded) in cases {
            assert_eq!(tile_path(3, index, None), format!("tile/3/{encoded}"));
            assert_eq!(
                parse_tile_path(&format!("tile/3/{encoded}")),
                Ok((3, index, None))
            );
        }
    }

    #[test]
    fn paths_round_trip() {
        let indexes = [
            0,
            1,
            255,
            256,
            999,
            1000,
            65_535,
            1 << 40,
            u64::MAX - 1,
            u64::MAX,
        ];
        for level in [0, 1, 2, 7, 8, 63] {
            for index in indexes {
                for width in [None, Some(1), Some(17), Some(255)] {
                    let path = tile_path(level, index, width);
                    assert_eq!(parse_tile_path(&path), Ok((level, index, width)), "{path}");
                }
            }
        }
        // A width of 256 is a full tile.
        assert_eq!(tile_path(1, 2, Some(256)), "tile/1/002");
    }

    #[test]
    fn non_canonical_paths_are_rejected() {
        for bad in [
            "",
            "tile",
            "tile/",
            "tile/0",
            "tile/0/",
            "/tile/0/000",
            "tiles/0/000",
            "tile/00/000",
            "tile/64/000",
            "tile/256/000",
            "tile/+1/000",
            "tile/a/000",
            "tile/entries/000",
            "tile/0/0",
            "tile/0/00",
            "tile/0/0000",
            "tile/0/x000",
            "tile/0/x001",
            "tile/0/001/002",
            "tile/0/x000/001",
            "tile/0/x01/001",
            "tile/0/xx01/001",
            "tile/0/X001/001",
            "tile/0/x001//001",
            "tile/0/001/",
            "tile/0/abc",
            "tile/0/x999/x999/x999/x999/x999/x999/999",
            "tile/0/x018/x446/x744/x073/x709/x551/616",
            "tile/0/x001/x000/x000/x000/x000/x000/x000/000",
            "tile/0/001.p/0",
            "tile/0/001.p/256",
            "tile/0/001.p/08",
            "tile/0/001.p/",
            "tile/0/001.p",
            "tile/0/001.p/5/6",
            "tile/0/001.p/5.p/6",
            "tile/0/001.P/5",
            "tile/0/x001.p/5/002",
            "tile/0/001.p/+5",
        ] {
            assert!(
                matches!(parse_tile_path(bad), Err(TileError::Malformed { .. })),
                "{bad:?} parsed as {:?}",
                parse_tile_path(bad)
            );
        }
        assert_eq!(
            parse_tile_path("tile/0/x000/001"),
            Err(TileError::Malformed {
                path: "tile/0/x000/001".to_owned(),
                reason: "the index has a leading x000 element",
            })
        );
    }

    #[test]
    fn widths_follow_the_spec_examples() {
        // c2sp.org/tlog-tiles: a tree of size 70,000 has 273 full level 0 tiles, a
        // partial level 0 tile of width 112, one full level 1 tile, a partial level
        // 1 tile of width 17, and a partial level 2 tile of width 1.
        let size = 70_000;
        assert_eq!(tile_width(0, 0, size), Some(256));
        assert_eq!(tile_width(0, 272, size), Some(256));
        assert_eq!(tile_width(0, 273, size), Some(112));
        assert_eq!(tile_width(0, 274, size), None);
        assert_eq!(tile_width(1, 0, size), Some(256));
        assert_eq!(tile_width(1, 1, size), Some(17));
        assert_eq!(tile_width(1, 2, size), None);
        assert_eq!(tile_width(2, 0, size), Some(1));
        assert_eq!(tile_width(2, 1, size), None);
        assert_eq!(tile_width(3, 0, size), None);

        // "a tree of size 256 will be represented by a full level 0 tile and a
        // partial level 1 tile of width 1."
        assert_eq!(tile_width(0, 0, 256), Some(256));
        assert_eq!(tile_width(0, 1, 256), None);
        assert_eq!(tile_width(1, 0, 256), Some(1));
        assert_eq!(tile_width(2, 0, 256), None);

        // Nothing in the empty tree, and no level is too high to ask about.
        assert_eq!(tile_width(0, 0, 0), None);
        assert_eq!(tile_width(7, 0, u64::MAX), Some(255));
        assert_eq!(tile_width(8, 0, u64::MAX), None);
        assert_eq!(tile_width(63, 0, u64::MAX), None);
        assert_eq!(tile_width(0, u64::MAX / 256, u64::MAX), Some(255));
    }

    #[test]
    fn hash_and_leaf_ranges() {
        assert_eq!(tile_hash_range(0, 0, 256), (0, 256));
        assert_eq!(tile_hash_range(0, 273, 112), (69_888, 70_000));
        assert_eq!(tile_hash_range(1, 1, 17), (256, 273));
        assert_eq!(tile_hash_range(2, 0, 1), (0, 1));
        assert_eq!(tile_hash_range(0, u64::MAX, 256), (u64::MAX, u64::MAX));

        assert_eq!(tile_leaf_range(0, 273, 112), Some((69_888, 70_000)));
        assert_eq!(tile_leaf_range(1, 0, 256), Some((0, 65_536)));
        assert_eq!(tile_leaf_range(1, 1, 17), Some((65_536, 65_536 + 17 * 256)));
        assert_eq!(tile_leaf_range(2, 0, 1), Some((0, 65_536)));
        assert_eq!(tile_leaf_range(7, 0, 255), Some((0, 255 << 56)));
        assert_eq!(tile_leaf_range(7, 0, 256), None);
        assert_eq!(tile_leaf_range(8, 0, 1), None);
        assert_eq!(tile_leaf_range(0, u64::MAX, 1), None);

        // Every hash of a full tile is the root of one full tile of the level
        // below: hash k of level L covers what tile k of level L-1 covers.
        for level in 1..=3u8 {
            for k in [0, 1, 5, 300] {
                let (start, end) = tile_hash_range(level, k / 256, 256);
                assert!(start <= k && k < end);
                let below = tile_leaf_range(level - 1, k, 256).unwrap();
                let per_hash = 256u64.pow(u32::from(level));
                assert_eq!(below, (k * per_hash, (k + 1) * per_hash));
            }
        }
    }

    #[test]
    fn partial_tiles_sum_to_the_tree() {
        // At every level, the full tiles and the partial tile cover exactly the
        // complete hashes of that level.
        for size in [0u64, 1, 255, 256, 257, 65_535, 65_536, 70_000, 16_777_217] {
            for level in 0..=3u8 {
                let mut hashes = 0;
                let mut index = 0;
                while let Some(width) = tile_width(level, index, size) {
                    assert_eq!(tile_hash_range(level, index, width).0, hashes);
                    hashes += width;
                    index += 1;
                }
                assert_eq!(
                    hashes,
                    size / 256u64.pow(u32::from(level)),
                    "size {size}, level {level}"
                );
            }
        }
    }
}
