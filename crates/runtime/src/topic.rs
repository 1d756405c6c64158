//! A message topic: a short string copied into every message. Topics of up to 22 bytes
//! (nearly all) live inline, so making one is a byte copy; longer ones share one heap
//! allocation. Never mutated after creation.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

pub(crate) const INLINE: usize = 22;

#[derive(Clone)]
pub struct Topic(Repr);

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
            let mut buf = [0u8; INLINE];
            buf[..b.len()].copy_from_slice(b);
            Topic(Repr::Inline { len: b.len() as u8, buf })
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
    }
}
