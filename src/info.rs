//! What criu says about itself and the kernel: [`Version`] and [`Features`].

use std::cmp::Ordering;
use std::fmt;

use crate::proto::{CriuFeatures, CriuVersion};

/// criu's version, as its `VERSION` request reports it.
///
/// Ordered by (major, minor, sublevel, extra); `gitid` and `name` do not take part.
///
/// ```
/// use criu_swrk::Version;
/// let v = Version::new(4, 1, 1);
/// assert!(v.at_least(4, 0));
/// assert!(!v.at_least(4, 2));
/// assert_eq!(v.to_string(), "4.1.1");
/// ```
#[derive(Debug, Clone, Eq)]
#[non_exhaustive]
pub struct Version {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Sublevel (patch) number; 0 when criu does not report one.
    pub sublevel: u32,
    /// Extra number of development builds; 0 when not reported.
    pub extra: u32,
    /// The git commit criu was built from, when known.
    pub gitid: Option<String>,
    /// The release name, when reported.
    pub name: Option<String>,
}

impl Version {
    /// A version with no git id or name, e.g. to compare against.
    pub fn new(major: u32, minor: u32, sublevel: u32) -> Self {
        Version {
            major,
            minor,
            sublevel,
            extra: 0,
            gitid: None,
            name: None,
        }
    }

    /// Whether this is `major.minor` or later.
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    fn key(&self) -> (u32, u32, u32, u32) {
        (self.major, self.minor, self.sublevel, self.extra)
    }
}

impl From<CriuVersion> for Version {
    fn from(v: CriuVersion) -> Self {
        let n = |x: i32| u32::try_from(x).unwrap_or(0);
        Version {
            major: n(v.major_number),
            minor: n(v.minor_number),
            sublevel: v.sublevel.map(n).unwrap_or(0),
            extra: v.extra.map(n).unwrap_or(0),
            gitid: v.gitid.filter(|g| !g.is_empty()),
            name: v.name.filter(|g| !g.is_empty()),
        }
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl std::hash::Hash for Version {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if self.sublevel != 0 || self.extra != 0 {
            write!(f, ".{}", self.sublevel)?;
        }
        if self.extra != 0 {
            write!(f, ".{}", self.extra)?;
        }
        Ok(())
    }
}

/// Optional kernel features, as criu's `FEATURE_CHECK` found them on this machine.
///
/// Every feature is asked for; a field is `false` when criu found it missing or did not
/// answer for it (an older criu).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Features {
    /// Memory change tracking (soft-dirty bits): needed by pre-dumps and `track_mem`.
    pub mem_track: bool,
    /// userfaultfd as lazy (post-copy) restore needs it. criu's answer is advice: the
    /// local lazy-pages flow can work where this says `false`.
    pub lazy_pages: bool,
    /// pidfd_open + pidfd_getfd, for the pidfd store (pid-reuse detection).
    pub pidfd_store: bool,
}

impl Features {
    /// The request that asks criu about every feature it knows.
    pub(crate) fn query() -> CriuFeatures {
        CriuFeatures {
            mem_track: Some(true),
            lazy_pages: Some(true),
            pidfd_store: Some(true),
        }
    }
}

impl From<CriuFeatures> for Features {
    fn from(f: CriuFeatures) -> Self {
        Features {
            mem_track: f.mem_track.unwrap_or(false),
            lazy_pages: f.lazy_pages.unwrap_or(false),
            pidfd_store: f.pidfd_store.unwrap_or(false),
        }
    }
}

/// This machine's page size (criu counts memory in pages).
pub(crate) fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_and_display() {
        let a = Version::new(3, 17, 1);
        let b = Version::new(4, 0, 0);
        let c = Version::new(4, 1, 1);
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "4.0");
        assert!(c.at_least(4, 1) && !c.at_least(5, 0));
        let from_wire = Version::from(CriuVersion {
            major_number: 4,
            minor_number: 2,
            gitid: Some(String::new()),
            sublevel: None,
            extra: None,
            name: Some("CRIUsalem".into()),
        });
        assert_eq!(from_wire.to_string(), "4.2");
        assert_eq!(from_wire.gitid, None);
        assert_eq!(from_wire.name.as_deref(), Some("CRIUsalem"));
    }
}
