//! A message topic: a short string copied into every message. Topics of up to 22 bytes
//! (nearly all) live inline, so making one is a byte copy; longer ones share one heap
//! allocation. Never mutated after creation.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

pub(crate) const INLINE: usize = 22;

#[derive(Clone)]
pub struct Topic(Repr);

/// `b` (at most `INLINE` bytes) zero-padded, with fixed-size copies only: two overlapping
/// ones cover any length, so no `memset`/`memcpy` call is made for the variable tail (a
/// topic is built for every message sent).
#[inline]
fn inline(b: &[u8]) -> [u8; INLINE] {
    fn put<const N: usize>(buf: &mut [u8; INLINE], at: usize, b: &[u8]) {
        let chunk: [u8; N] = b[at..at + N].try_into().expect("in range");
        buf[at..at + N].copy_from_slice(&chunk);
    }
    let mut buf = [0u8; INLINE];
    let n = b.len();
    if n >= 16 {
        put::<16>(&mut buf, 0, b);
        put::<8>(&mut buf, n - 8, b);
    } else if n >= 8 {
        put::<8>(&mut buf, 0, b);
        put::<8>(&mut buf, n - 8, b);
    } else if n >= 4 {
        put::<4>(&mut buf, 0, b);
        put::<4>(&mut buf, n - 4, b);
    } else {
        for (d, s) in buf.iter_mut().zip(b) {
            *d = *s;
        }
    }
    buf
}

#[derive(Clone)]
enum Repr {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Arc<str>),
}

impl Topic {
    #[inline]
    pub fn new(s: &str) -> Topic {
        let b = s.as_bytes();
        if b.len() <= INLINE {
            Topic(Repr::Inline { len: b.len() as u8, buf: inline(b) })
        } else {
            Topic(Repr::Heap(Arc::from(s)))
        }
    }

    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // SAFETY: the inline bytes were copied from a &str, whole.
            Repr::Inline { len, buf } => unsafe { std::str::from_utf8_unchecked(&buf[..*len as usize]) },
            Repr::Heap(s) => s,
        }
    }
}

impl Deref for Topic {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Topic {
    fn from(s: &str) -> Topic {
        Topic::new(s)
    }
}

impl PartialEq for Topic {
    fn eq(&self, o: &Topic) -> bool {
        self.as_str() == o.as_str()
    }
}
impl Eq for Topic {}
impl PartialEq<str> for Topic {
    fn eq(&self, o: &str) -> bool {
        self.as_str() == o
    }
}
impl PartialEq<&str> for Topic {
    fn eq(&self, o: &&str) -> bool {
        self.as_str() == *o
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}
impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_topics() {
        for s in ["", "ping", "exactly-twenty-two-by", "a topic that is clearly longer than inline", "ünïcødé"] {
            let t = Topic::new(s);
            assert_eq!(t.as_str(), s);
            assert_eq!(t, s);
            assert_eq!(t.clone(), t);
        }
        assert_eq!(std::mem::size_of::<Topic>(), 24);
        // every length round-trips, zero-padded
        let text = "abcdefghijklmnopqrstuvwxyz";
        for n in 0..=INLINE {
            let t = Topic::new(&text[..n]);
            assert_eq!(t.as_str(), &text[..n]);
            if let Repr::Inline { buf, .. } = &t.0 {
                assert!(buf[n..].iter().all(|&c| c == 0), "{n}");
            }
        }
    }
}
