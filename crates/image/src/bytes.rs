//! Byte vectors in records, encoded as one run of bytes.
//!
//! Serde sees a `Vec<u8>` as a sequence of `u8` values and encodes it one call per byte; as
//! bytes (`serialize_bytes`) it is one copy. Postcard writes both the same way (a varint
//! length, then the bytes: test `bytes_encode_as_a_sequence_of_u8_did`), so records written
//! either way read either way; JSON shows both as a list of numbers. Here a process record
//! of two threads (27 KiB, 22 KiB of it their XSAVE areas of 11 KiB each) took 26–37 µs to
//! encode with sequences, 8.5–10 µs with bytes.
//!
//! Fields use `#[serde(with = "crate::bytes")]` (`Vec<u8>`) or
//! `#[serde(with = "crate::bytes::vecs")]` (`Vec<Vec<u8>>`). Decoding charges the budget the
//! length of each ([`crate::budget`]).

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use std::fmt;

/// Encodes `v` as bytes.
pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

/// Decodes bytes (or, from a format that has none, a sequence of `u8`).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_byte_buf(ByteBuf)
}

/// The visitor of one byte vector.
struct ByteBuf;

impl<'de> Visitor<'de> for ByteBuf {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        // Not sized by the input: a length that lies costs nothing.
        let mut v = Vec::new();
        while let Some(b) = seq.next_element()? {
            v.push(b);
        }
        Ok(v)
    }
}

/// `Vec<Vec<u8>>`, each vector as bytes.
pub mod vecs {
    use super::*;

    /// One vector of the list, as bytes.
    struct AsBytes<'a>(&'a [u8]);

    impl serde::Serialize for AsBytes<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    /// One vector of the list, decoded as bytes.
    struct FromBytes(Vec<u8>);

    impl<'de> serde::Deserialize<'de> for FromBytes {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            super::deserialize(d).map(FromBytes)
        }
    }

    /// Encodes `v` as a sequence of byte runs.
    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for b in v {
            seq.serialize_element(&AsBytes(b))?;
        }
        seq.end()
    }

    /// Decodes a sequence of byte runs.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        struct List;
        impl<'de> Visitor<'de> for List {
            type Value = Vec<Vec<u8>>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of bytes")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(FromBytes(b)) = seq.next_element()? {
                    v.push(b);
                }
                Ok(v)
            }
        }
        d.deserialize_seq(List)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Plain {
        a: Vec<u8>,
        n: u32,
        list: Vec<Vec<u8>>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AsBytes {
        #[serde(with = "crate::bytes")]
        a: Vec<u8>,
        n: u32,
        #[serde(with = "crate::bytes::vecs")]
        list: Vec<Vec<u8>>,
    }

    fn both(a: Vec<u8>, list: Vec<Vec<u8>>) -> (Plain, AsBytes) {
        let p = Plain {
            a: a.clone(),
            n: 300,
            list: list.clone(),
        };
        (p, AsBytes { a, n: 300, list })
    }

    /// The same bytes in postcard and in JSON, and each reads the other's.
    #[test]
    fn bytes_encode_as_a_sequence_of_u8_did() {
        let cases = [
            (vec![], vec![]),
            (vec![0, 1, 255, 128, 7], vec![vec![], vec![9; 200]]),
            ((0..=255u8).cycle().take(5000).collect(), vec![vec![1]]),
        ];
        for (a, list) in cases {
            let (p, b) = both(a, list);
            let pe = postcard::to_stdvec(&p).unwrap();
            let be = postcard::to_stdvec(&b).unwrap();
            assert_eq!(pe, be);
            assert_eq!(postcard::from_bytes::<AsBytes>(&pe).unwrap(), b);
            assert_eq!(postcard::from_bytes::<Plain>(&be).unwrap(), p);
            let pj = serde_json::to_string(&p).unwrap();
            assert_eq!(pj, serde_json::to_string(&b).unwrap());
            assert_eq!(serde_json::from_str::<AsBytes>(&pj).unwrap(), b);
        }
    }

    /// Within the decode budget (each vector charged its length), and refused past it.
    #[test]
    fn byte_vectors_are_charged_to_the_budget() {
        let (_, b) = both(vec![5; 1000], vec![vec![6; 500]]);
        let e = postcard::to_stdvec(&b).unwrap();
        let p = std::path::Path::new("/x");
        let need = 1000 + 500 + std::mem::size_of::<Vec<u8>>();
        let back: AsBytes = crate::budget::decode(&e, need, p, "t").unwrap();
        assert_eq!(back, b);
        assert!(crate::budget::decode::<AsBytes>(&e, need - 1, p, "t").is_err());
        // A length past the end is an error, not an allocation.
        let mut bad = e.clone();
        bad.truncate(10);
        assert!(crate::budget::decode::<AsBytes>(&bad, usize::MAX, p, "t").is_err());
    }
}
