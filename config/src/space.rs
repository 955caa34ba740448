//! Disk space and permission settings of a folder: `min_free` ([`MinFree`])
//! and `umask` ([`Umask`]), with their parsers.

use std::fmt;

/// `[[folders]] min_free`'s default cap: never keep more than this free by
/// default, however big the filesystem...
pub const DEFAULT_MIN_FREE_BYTES: u64 = 1 << 30;
/// ...and never more than this share of it (a small disk stays usable).
pub const DEFAULT_MIN_FREE_PERCENT: u8 = 5;
/// A reserve above this share of the filesystem would refuse every fetch.
pub const MAX_MIN_FREE_PERCENT: u8 = 50;

/// Space a fetch must leave free on the folder's filesystem and on the one
/// holding `data_dir` (blob store and index), beyond the announced size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinFree {
    /// The smaller of 1 GiB and 5% of the filesystem.
    #[default]
    Default,
    Bytes(u64),
    /// A share of the filesystem's size, 0-50.
    Percent(u8),
}

impl MinFree {
    /// The reserve, in bytes, on a filesystem of `total` bytes.
    pub fn reserve(self, total: u64) -> u64 {
        let share = |p: u8| u64::try_from(u128::from(total) * u128::from(p) / 100).unwrap_or(total);
        match self {
            MinFree::Default => DEFAULT_MIN_FREE_BYTES.min(share(DEFAULT_MIN_FREE_PERCENT)),
            MinFree::Bytes(n) => n,
            MinFree::Percent(p) => share(p),
        }
    }

    /// Parse "1GiB", "500MB", "4096", "0" or "5%".
    pub fn parse(s: &str) -> Result<MinFree, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: u8 = p
                .trim()
                .parse()
                .ok()
                .filter(|p| *p <= MAX_MIN_FREE_PERCENT)
                .ok_or_else(|| {
                    format!("{s:?} is not a whole percentage from 0% to {MAX_MIN_FREE_PERCENT}%")
                })?;
            return Ok(MinFree::Percent(p));
        }
        parse_size(s).map(MinFree::Bytes)
    }
}

impl fmt::Display for MinFree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MinFree::Default => write!(f, "min(1GiB, {DEFAULT_MIN_FREE_PERCENT}%) (default)"),
            MinFree::Bytes(n) => write!(f, "{n} bytes"),
            MinFree::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// A byte count with an optional unit: B, KB/MB/GB/TB (powers of 1000),
/// KiB/MiB/GiB/TiB (powers of 1024); case-insensitive, a space allowed.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "{s:?} is not a size; expected a whole number with an optional unit, \
             e.g. \"1GiB\", \"500MB\", \"4096\""
        )
    };
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000u64.pow(2),
        "gb" => 1000u64.pow(3),
        "tb" => 1000u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// The permission bits a folder never gives a received file or directory
/// (`[[folders]] umask`, default 022).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Umask(pub u32);

impl Default for Umask {
    fn default() -> Self {
        Umask(0o022)
    }
}

impl Umask {
    /// Parse an octal string of permission bits: "022", "0o027", "77".
    pub fn parse(s: &str) -> Result<Umask, String> {
        let s = s.trim();
        let digits = s.strip_prefix("0o").unwrap_or(s);
        u32::from_str_radix(digits, 8)
            .ok()
            .filter(|m| *m <= 0o777 && !digits.is_empty())
            .map(Umask)
            .ok_or_else(|| format!("{s:?} is not an octal umask from 000 to 777"))
    }
}

impl fmt::Display for Umask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:03o}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_default_reserve_is_the_smaller_of_1gib_and_5_percent() {
        assert_eq!(MinFree::Default.reserve(100 * GIB), GIB);
        assert_eq!(MinFree::Default.reserve(10 * GIB), GIB / 2);
        assert_eq!(MinFree::Default.reserve(8 << 20), (8 << 20) / 20);
        assert_eq!(MinFree::Percent(10).reserve(1000), 100);
        assert_eq!(MinFree::Bytes(7).reserve(1000), 7);
        assert_eq!(MinFree::Percent(50).reserve(u64::MAX), u64::MAX / 2);
    }

    #[test]
    fn sizes_and_percentages_parse() {
        assert_eq!(MinFree::parse("1GiB"), Ok(MinFree::Bytes(GIB)));
        assert_eq!(MinFree::parse("500 MB"), Ok(MinFree::Bytes(500_000_000)));
        assert_eq!(MinFree::parse("0"), Ok(MinFree::Bytes(0)));
        assert_eq!(MinFree::parse("5%"), Ok(MinFree::Percent(5)));
        for bad in [
            "",
            "x",
            "1.5GiB",
            "-1",
            "51%",
            "5.5%",
            "1PiB",
            "99999999999TiB",
        ] {
            assert!(MinFree::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn umasks_are_octal_permission_bits() {
        assert_eq!(Umask::parse("022"), Ok(Umask(0o022)));
        assert_eq!(Umask::parse("0o077"), Ok(Umask(0o077)));
        assert_eq!(Umask::parse("0"), Ok(Umask(0)));
        for bad in ["", "0o", "8", "1000", "rwx", "-22"] {
            assert!(Umask::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(Umask::default().to_string(), "022");
    }
}
