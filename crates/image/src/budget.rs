//! Decoding with a memory budget: a record cannot make the decoder allocate more than a fixed
//! number of bytes, whatever its lists say.
//!
//! Postcard encodes a list as its length and then its elements, and an element can take far
//! more memory decoded than encoded (a minimal `FileDesc` is 9 bytes on disk and about 200 in
//! memory). A record within [`MAX_RECORD_LEN`](crate::MAX_RECORD_LEN) could so decode into
//! gigabytes before validation looked at it. [`decode`] wraps the postcard deserializer in one
//! that charges, against a [`DECODE_BUDGET`]:
//!
//! * every element of a variable-length sequence (`Vec`, sets) or map the size of its type in
//!   memory (at least 1 byte, so that a list of zero-sized elements is bounded too);
//! * every string and byte buffer its length.
//!
//! Fixed-size things (struct fields, tuples, arrays) are part of the element that holds them
//! and cost nothing more. The charge happens before the element is stored, so the decoded
//! value never holds more than the budget (a `Vec` growing by doubling may transiently reserve
//! up to twice what it holds). Decoding stops with [`ImageError::TooLarge`] at the first
//! charge over the budget.

use crate::ImageError;
use serde::de::{self, DeserializeSeed, Deserializer, Visitor};
use std::cell::Cell;
use std::fmt;
use std::path::Path;

/// Most bytes of lists and strings one record may decode into (256 MiB). A process record of
/// a million open descriptions (the validation limit, [`crate::MAX_FDS`]) with its fd table
/// takes about 220 MiB.
pub const DECODE_BUDGET: usize = 256 << 20;

/// What is left of a budget, shared by the wrappers of one decode.
struct Budget {
    left: Cell<usize>,
    exceeded: Cell<bool>,
}

impl Budget {
    fn charge<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        match self.left.get().checked_sub(bytes) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.exceeded.set(true);
                Err(E::custom("decode budget exceeded"))
            }
        }
    }
}

/// Decodes one postcard value from the whole of `bytes` within `budget` bytes of lists and
/// strings (see the module documentation); `what` names the value in errors.
pub(crate) fn decode<T: de::DeserializeOwned>(
    bytes: &[u8],
    budget: usize,
    path: &Path,
    what: &str,
) -> Result<T, ImageError> {
    let b = Budget {
        left: Cell::new(budget),
        exceeded: Cell::new(false),
    };
    let mut de = postcard::Deserializer::from_bytes(bytes);
    let value = T::deserialize(Charged {
        inner: &mut de,
        budget: &b,
    });
    let value = match value {
        Ok(v) => v,
        Err(_) if b.exceeded.get() => {
            return Err(ImageError::Invalid {
                path: path.to_path_buf(),
                reason: format!(
                    "the {what} would decode into more than {budget} bytes of lists and strings"
                ),
            })
        }
        Err(e) => {
            return Err(ImageError::Decode {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        }
    };
    let rest = de.finalize().map_err(|e| ImageError::Decode {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(ImageError::Decode {
            path: path.to_path_buf(),
            reason: format!("{} unused bytes after the {what}", rest.len()),
        });
    }
    Ok(value)
}

/// How a wrapped visitor treats the elements of the sequence it is handed.
#[derive(Clone, Copy)]
enum Elements {
    /// A list or map of any length: each element is charged.
    Charged,
    /// A struct, tuple or array: fixed fields, already paid for by what holds them.
    Free,
}

/// A deserializer that charges the budget for what it decodes.
struct Charged<'b, D> {
    inner: D,
    budget: &'b Budget,
}

/// A visitor that wraps what it is handed so nested values are charged too.
struct ChargedVisitor<'b, V> {
    inner: V,
    budget: &'b Budget,
    elements: Elements,
}

/// A sequence or map access that charges each element.
struct ChargedAccess<'b, A> {
    inner: A,
    budget: &'b Budget,
    elements: Elements,
}

/// A seed whose deserializer is wrapped.
struct ChargedSeed<'b, S> {
    inner: S,
    budget: &'b Budget,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for ChargedSeed<'_, S> {
    type Value = S::Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Charged {
            inner: d,
            budget: self.budget,
        })
    }
}

impl<'b, D> Charged<'b, D> {
    fn visitor<V>(&self, inner: V, elements: Elements) -> ChargedVisitor<'b, V> {
        ChargedVisitor {
            inner,
            budget: self.budget,
            elements,
        }
    }
}

/// Forwards `deserialize_*` methods that take only a visitor.
macro_rules! forward {
    ($($m:ident => $e:expr),* $(,)?) => {$(
        fn $m<V: Visitor<'de>>(self, v: V) -> Result<V::Value, D::Error> {
            let v = self.visitor(v, $e);
            self.inner.$m(v)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Charged<'_, D> {
    type Error = D::Error;

    forward! {
        deserialize_any => Elements::Charged,
        deserialize_bool => Elements::Free,
        deserialize_i8 => Elements::Free,
        deserialize_i16 => Elements::Free,
        deserialize_i32 => Elements::Free,
        deserialize_i64 => Elements::Free,
        deserialize_i128 => Elements::Free,
        deserialize_u8 => Elements::Free,
        deserialize_u16 => Elements::Free,
        deserialize_u32 => Elements::Free,
        deserialize_u64 => Elements::Free,
        deserialize_u128 => Elements::Free,
        deserialize_f32 => Elements::Free,
        deserialize_f64 => Elements::Free,
        deserialize_char => Elements::Free,
        deserialize_str => Elements::Free,
        deserialize_string => Elements::Free,
        deserialize_bytes => Elements::Free,
        deserialize_byte_buf => Elements::Free,
        deserialize_option => Elements::Free,
        deserialize_unit => Elements::Free,
        deserialize_seq => Elements::Charged,
        deserialize_map => Elements::Charged,
        deserialize_identifier => Elements::Free,
        deserialize_ignored_any => Elements::Free,
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, D::Error> {
        let v = self.visitor(v, Elements::Free);
        self.inner.deserialize_unit_struct(name, v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, D::Error> {
        let v = self.visitor(v, Elements::Free);
        self.inner.deserialize_newtype_struct(name, v)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, D::Error> {
        let v = self.visitor(v, Elements::Free);
        self.inner.deserialize_tuple(len, v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        v: V,
    ) -> Result<V::Value, D::Error> {
        let v = self.visitor(v, Elements::Free);
        self.inner.deserialize_tuple_struct(name, len, v)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, D::Error> {
        let v = self.visitor(v, Elements::Free);
        self.inner.deserialize_struct(name, fields, v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, D::Error> {
        let v = self.visitor(v, Elements::Free);
        self.inner.deserialize_enum(name, variants, v)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// Forwards `visit_*` methods of plain values.
macro_rules! visit_plain {
    ($($m:ident: $t:ty),* $(,)?) => {$(
        fn $m<E: de::Error>(self, x: $t) -> Result<V::Value, E> {
            self.inner.$m(x)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for ChargedVisitor<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.expecting(f)
    }

    visit_plain! {
        visit_bool: bool, visit_i8: i8, visit_i16: i16, visit_i32: i32, visit_i64: i64,
        visit_i128: i128, visit_u8: u8, visit_u16: u16, visit_u32: u32, visit_u64: u64,
        visit_u128: u128, visit_f32: f32, visit_f64: f64, visit_char: char,
    }

    fn visit_str<E: de::Error>(self, x: &str) -> Result<V::Value, E> {
        self.budget.charge(x.len())?;
        self.inner.visit_str(x)
    }

    fn visit_borrowed_str<E: de::Error>(self, x: &'de str) -> Result<V::Value, E> {
        self.budget.charge(x.len())?;
        self.inner.visit_borrowed_str(x)
    }

    fn visit_string<E: de::Error>(self, x: String) -> Result<V::Value, E> {
        self.budget.charge(x.len())?;
        self.inner.visit_string(x)
    }

    fn visit_bytes<E: de::Error>(self, x: &[u8]) -> Result<V::Value, E> {
        self.budget.charge(x.len())?;
        self.inner.visit_bytes(x)
    }

    fn visit_borrowed_bytes<E: de::Error>(self, x: &'de [u8]) -> Result<V::Value, E> {
        self.budget.charge(x.len())?;
        self.inner.visit_borrowed_bytes(x)
    }

    fn visit_byte_buf<E: de::Error>(self, x: Vec<u8>) -> Result<V::Value, E> {
        self.budget.charge(x.len())?;
        self.inner.visit_byte_buf(x)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(Charged {
            inner: d,
            budget: self.budget,
        })
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(Charged {
            inner: d,
            budget: self.budget,
        })
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, a: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(ChargedAccess {
            inner: a,
            budget: self.budget,
            elements: self.elements,
        })
    }

    fn visit_map<A: de::MapAccess<'de>>(self, a: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(ChargedAccess {
            inner: a,
            budget: self.budget,
            elements: self.elements,
        })
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, a: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(ChargedAccess {
            inner: a,
            budget: self.budget,
            elements: Elements::Free,
        })
    }
}

impl<A> ChargedAccess<'_, A> {
    fn charge<T, E: de::Error>(&self) -> Result<(), E> {
        match self.elements {
            Elements::Charged => self.budget.charge(std::mem::size_of::<T>().max(1)),
            Elements::Free => Ok(()),
        }
    }
}

impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for ChargedAccess<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        // Charged before the element is decoded: a list of a billion elements stops at the
        // budget, not after decoding them.
        if self.inner.size_hint() != Some(0) {
            self.charge::<T::Value, A::Error>()?;
        }
        self.inner.next_element_seed(ChargedSeed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: de::MapAccess<'de>> de::MapAccess<'de> for ChargedAccess<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        if self.inner.size_hint() != Some(0) {
            self.charge::<K::Value, A::Error>()?;
        }
        self.inner.next_key_seed(ChargedSeed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.charge::<S::Value, A::Error>()?;
        self.inner.next_value_seed(ChargedSeed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, 'b, A: de::EnumAccess<'de>> de::EnumAccess<'de> for ChargedAccess<'b, A> {
    type Error = A::Error;
    type Variant = ChargedAccess<'b, A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), A::Error> {
        let (value, variant) = self.inner.variant_seed(ChargedSeed {
            inner: seed,
            budget: self.budget,
        })?;
        Ok((
            value,
            ChargedAccess {
                inner: variant,
                budget: self.budget,
                elements: Elements::Free,
            },
        ))
    }
}

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for ChargedAccess<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, A::Error> {
        self.inner.newtype_variant_seed(ChargedSeed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, A::Error> {
        self.inner.tuple_variant(
            len,
            ChargedVisitor {
                inner: v,
                budget: self.budget,
                elements: Elements::Free,
            },
        )
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, A::Error> {
        self.inner.struct_variant(
            fields,
            ChargedVisitor {
                inner: v,
                budget: self.budget,
                elements: Elements::Free,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_record, Header, Inventory, ProcessImage, RecordKind, FORMAT_VERSION};
    use serde::Serialize;
    use std::path::PathBuf;

    fn p() -> PathBuf {
        PathBuf::from("test.img")
    }

    fn inventory() -> Inventory {
        Inventory {
            tool_version: "0.1".into(),
            kernel_release: "6.18".into(),
            created_unix_ms: 1,
            root_pid: 42,
            processes: vec![42, 43],
            zombies: vec![crate::Zombie {
                pid: 44,
                ppid: 42,
                pgid: 42,
                sid: 42,
                exit_status: 0,
            }],
            parent: None,
        }
    }

    fn varint(mut n: usize, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    /// The postcard encoding of `value` with the one list that `set` fills (with copies of one
    /// element) made `n` elements long, built from the encodings of one and two elements.
    fn inflated<T: Serialize + Clone>(value: &T, set: &dyn Fn(&mut T, usize), n: usize) -> Vec<u8> {
        let enc = |k| {
            let mut v = value.clone();
            set(&mut v, k);
            postcard::to_stdvec(&v).unwrap()
        };
        let (one, two) = (enc(1), enc(2));
        let at = one.iter().zip(&two).take_while(|(a, b)| a == b).count();
        assert_eq!((one[at], two[at]), (1, 2), "the length of the list");
        let elem = &two[at + 1..at + 1 + (two.len() - one.len())];
        let mut out = Vec::with_capacity(one.len() + n * elem.len() + 10);
        out.extend_from_slice(&one[..at]);
        varint(n, &mut out);
        for _ in 0..n {
            out.extend_from_slice(elem);
        }
        out.extend_from_slice(&one[at + 1 + elem.len()..]);
        out
    }

    /// A framed record of `kind` around `payload`.
    fn framed(kind: RecordKind, payload: &[u8]) -> Vec<u8> {
        let header = Header {
            version: FORMAT_VERSION,
            kind: kind as u32,
            payload_len: payload.len() as u64,
            payload_crc: crc32c::crc32c(payload),
        };
        let mut out = header.encode().to_vec();
        out.extend_from_slice(payload);
        out
    }

    /// The element of `list` with the shortest encoding.
    fn smallest<E: Serialize + Clone>(list: &[E]) -> E {
        list.iter()
            .min_by_key(|e| postcard::to_stdvec(e).unwrap().len())
            .unwrap()
            .clone()
    }

    #[test]
    fn within_the_budget_decodes_as_postcard_does() {
        let sample = crate::testing::sample_process();
        let bytes = postcard::to_stdvec(&sample).unwrap();
        let back: ProcessImage = decode(&bytes, DECODE_BUDGET, &p(), "record").unwrap();
        assert_eq!(back, sample);
        let inv = inventory();
        let again: Inventory =
            decode(&postcard::to_stdvec(&inv).unwrap(), 1 << 20, &p(), "record").unwrap();
        assert_eq!(again, inv);
    }

    #[test]
    fn lists_and_strings_are_charged() {
        // 100 u64 take 800 bytes decoded.
        let v: Vec<u64> = (0..100).collect();
        let bytes = postcard::to_stdvec(&v).unwrap();
        assert_eq!(decode::<Vec<u64>>(&bytes, 800, &p(), "list").unwrap(), v);
        let err = decode::<Vec<u64>>(&bytes, 799, &p(), "list").unwrap_err();
        assert!(err.to_string().contains("more than 799 bytes"), "{err}");
        // A string is charged its length, in a list its size too.
        let s = vec!["x".repeat(1000)];
        let bytes = postcard::to_stdvec(&s).unwrap();
        let need = 1000 + std::mem::size_of::<String>();
        assert!(decode::<Vec<String>>(&bytes, need, &p(), "list").is_ok());
        assert!(decode::<Vec<String>>(&bytes, need - 1, &p(), "list").is_err());
        // Nested lists, options and enums are charged through.
        let nested: Vec<Option<Vec<u8>>> = vec![Some(vec![7; 500]), None];
        let bytes = postcard::to_stdvec(&nested).unwrap();
        let need = 2 * std::mem::size_of::<Option<Vec<u8>>>() + 500;
        assert!(decode::<Vec<Option<Vec<u8>>>>(&bytes, need, &p(), "list").is_ok());
        assert!(decode::<Vec<Option<Vec<u8>>>>(&bytes, need - 1, &p(), "list").is_err());
        // Struct fields and arrays cost nothing beyond the element holding them.
        let arr: Vec<([u64; 4], (u32, u32))> = vec![([1; 4], (2, 3)); 3];
        let bytes = postcard::to_stdvec(&arr).unwrap();
        let need = 3 * std::mem::size_of::<([u64; 4], (u32, u32))>();
        assert!(decode::<Vec<([u64; 4], (u32, u32))>>(&bytes, need, &p(), "list").is_ok());
    }

    #[test]
    fn a_list_of_zero_sized_elements_is_bounded() {
        // 2^62 units are 9 bytes on the wire and nothing in memory, but a decoder counting
        // them would run for centuries.
        let mut bytes = Vec::new();
        varint(1 << 62, &mut bytes);
        let err = decode::<Vec<()>>(&bytes, 1 << 20, &p(), "list").unwrap_err();
        assert!(matches!(err, ImageError::Invalid { .. }), "{err}");
    }

    #[test]
    fn a_record_of_cheap_elements_stops_at_the_budget() {
        // 9 MiB of minimal descriptions, decoded with a budget of 16 MiB: refused before
        // decoding them all (about 200 bytes each in memory).
        let sample = crate::testing::sample_process();
        let file = smallest(&sample.files);
        let n = (9 << 20) / postcard::to_stdvec(&file).unwrap().len();
        let payload = inflated(
            &sample,
            &|p: &mut ProcessImage, k| p.files = vec![file.clone(); k],
            n,
        );
        let err = decode::<ProcessImage>(&payload, 16 << 20, &p(), "payload").unwrap_err();
        assert!(
            err.to_string().contains("more than 16777216 bytes"),
            "{err}"
        );
        // decode_record applies DECODE_BUDGET.
        let framed = framed(RecordKind::Process, &payload);
        assert!(decode_record::<ProcessImage>(RecordKind::Process, &framed, &p()).is_ok());
    }

    /// The lists of a process record that cost the most memory per encoded byte (descriptions
    /// 22 times, POSIX locks 8 times), filled up to a record of 60 MiB (within
    /// `MAX_RECORD_LEN`) with copies of their cheapest element: the decode's peak memory (VmHWM
    /// of a child process that only reads and decodes the file) stays near the budget. Without
    /// the budget the descriptions took 1.5 GiB and the locks 480 MiB.
    #[test]
    fn decoding_a_hostile_record_stays_within_its_memory_budget() {
        // The budget of 256 MiB and room for a `Vec`'s doubling (a constant: the test must
        // fail when the budget goes).
        const BOUND: usize = (256 + 128) << 20;
        let sample = crate::testing::sample_process();
        type Set = Box<dyn Fn(&mut ProcessImage, usize)>;
        macro_rules! list {
            ($($f:ident).+) => {{
                let e = smallest(&sample.$($f).+);
                (stringify!($($f).+), Box::new(move |p: &mut ProcessImage, k| p.$($f).+ = vec![e.clone(); k]) as Set)
            }};
        }
        let lists: Vec<(&str, Set)> = vec![list!(files), list!(posix_locks)];
        let dir = std::env::temp_dir().join(format!("stasis-budget-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut failures = Vec::new();
        for (name, set) in &lists {
            let one = {
                let mut v = sample.clone();
                set(&mut v, 1);
                postcard::to_stdvec(&v).unwrap().len()
            };
            let two = {
                let mut v = sample.clone();
                set(&mut v, 2);
                postcard::to_stdvec(&v).unwrap().len()
            };
            let n = (60 << 20) / (two - one);
            let file = dir.join(format!("{name}.img"));
            std::fs::write(
                &file,
                framed(RecordKind::Process, &inflated(&sample, set, n)),
            )
            .unwrap();
            let (grew, outcome) = decode_in_child(&file);
            std::fs::remove_file(&file).unwrap();
            eprintln!(
                "{name}: {n} elements, decode peak +{} MiB: {outcome}",
                grew >> 20
            );
            if grew > BOUND {
                failures.push(format!("{name}: {} MiB", grew >> 20));
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(failures.is_empty(), "decodes over the bound: {failures:?}");
    }

    /// Runs [`decode_child`] on `file` in a child process: how much its peak memory grew while
    /// decoding, and the outcome.
    fn decode_in_child(file: &std::path::Path) -> (usize, String) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "budget::tests::decode_child",
                "--ignored",
                "--nocapture",
            ])
            .args(["--test-threads", "1"])
            .env("STASIS_BUDGET_CHILD", file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find_map(|l| l.split_once("budget-child: ").map(|(_, r)| r))
            .unwrap_or_else(|| {
                panic!(
                    "child said nothing: {text} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let (grew, outcome) = line.split_once(' ').unwrap();
        (grew.parse().unwrap(), outcome.to_string())
    }

    fn vm_hwm() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kb: usize = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .parse()
            .unwrap();
        kb << 10
    }

    /// The child of [`decoding_a_hostile_record_stays_within_its_memory_budget`]: reads the
    /// file it is given, then decodes it, and prints by how much the decode raised its peak
    /// memory. Does nothing when run otherwise.
    #[test]
    #[ignore = "run by decoding_a_hostile_record_stays_within_its_memory_budget"]
    fn decode_child() {
        let Some(file) = std::env::var_os("STASIS_BUDGET_CHILD") else {
            return;
        };
        let bytes = std::fs::read(&file).unwrap();
        let before = vm_hwm();
        let outcome = decode_record::<ProcessImage>(RecordKind::Process, &bytes, &p())
            .map(|_| "decoded".to_string());
        let grew = vm_hwm().saturating_sub(before);
        let outcome = match outcome {
            Ok(s) => s,
            Err(e) => format!("refused: {e}"),
        };
        println!("budget-child: {grew} {outcome}");
    }
}
