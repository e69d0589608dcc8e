//! Every unknown key of a file in one pass, with "did you mean" (issue 12.4).
//!
//! serde stops at the first unknown field, so a file with `detcet`,
//! `max_row` and `shedule` used to report only `detcet`. When a file fails to
//! parse, [`unknown_keys`] reads it a second time as a tree of keys (with
//! positions) and compares every map with the fields of the matching `Raw*`
//! struct. The field lists come from the structs themselves (see
//! [`fields_of`]), so a key added to `raw.rs` is known here without a second
//! list to keep in step.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::error::ConfigError;
use super::raw;

/// A YAML value reduced to what key checks need: maps keep their keys
/// (with positions) and values; everything else is a leaf.
#[derive(Debug)]
enum KeyTree {
    Map(Vec<(Spanned<String>, KeyTree)>),
    Other,
}

impl<'de> Deserialize<'de> for KeyTree {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyTreeVisitor;
        impl<'de> Visitor<'de> for KeyTreeVisitor {
            type Value = KeyTree;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyTree, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
                    let value = map.next_value::<KeyTree>()?;
                    entries.push((
                        Spanned {
                            value: key.value.0,
                            referenced: key.referenced,
                            defined: key.defined,
                        },
                        value,
                    ));
                }
                Ok(KeyTree::Map(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyTree, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(KeyTree::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<KeyTree, E> {
                Ok(KeyTree::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<KeyTree, E> {
                Ok(KeyTree::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<KeyTree, E> {
                Ok(KeyTree::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<KeyTree, E> {
                Ok(KeyTree::Other)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<KeyTree, E> {
                Ok(KeyTree::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyTree, E> {
                Ok(KeyTree::Other)
            }
            fn visit_none<E: de::Error>(self) -> Result<KeyTree, E> {
                Ok(KeyTree::Other)
            }
        }
        deserializer.deserialize_any(KeyTreeVisitor)
    }
}

/// A map key of any scalar type, as text (`1:` is a key too).
#[derive(Debug)]
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyTextVisitor;
        impl Visitor<'_> for KeyTextVisitor {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText("~".to_owned()))
            }
        }
        deserializer.deserialize_any(KeyTextVisitor)
    }
}

/// What a map in the file should hold.
enum Shape {
    /// A struct: these keys, each with the shape of its value.
    Fields(&'static [&'static str], fn(&str) -> Shape),
    /// A map with names chosen by the operator, each value of one shape.
    Named(fn() -> Shape),
    /// Not checked here (lists, scalars, free-form maps such as `headers`).
    Any,
}

/// The field names of a `Raw*` struct, read from its derived `Deserialize`
/// (serde hands them to `deserialize_struct`).
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct FieldNames(&'static [&'static str]);
    #[derive(Debug)]
    struct Captured;
    impl fmt::Display for Captured {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("field names captured")
        }
    }
    impl std::error::Error for Captured {}
    impl de::Error for Captured {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Captured
        }
    }
    struct Introspect<'a>(&'a mut FieldNames);
    impl<'de> Deserializer<'de> for Introspect<'_> {
        type Error = Captured;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Captured> {
            Err(Captured)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Captured> {
            self.0.0 = fields;
            Err(Captured)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut names = FieldNames(&[]);
    let _ = T::deserialize(Introspect(&mut names));
    names.0
}

fn config_shape() -> Shape {
    Shape::Fields(fields_of::<raw::RawConfig>(), |key| match key {
        "databases" => {
            Shape::Named(|| Shape::Fields(fields_of::<raw::RawDatabase>(), |_| Shape::Any))
        }
        "defaults" => Shape::Fields(fields_of::<raw::RawDefaults>(), |_| Shape::Any),
        "notifiers" => Shape::Named(notifier_shape),
        "audit" => Shape::Fields(fields_of::<raw::RawAudit>(), |_| Shape::Any),
        "daemon" => Shape::Fields(fields_of::<raw::RawDaemon>(), |_| Shape::Any),
        "images" => Shape::Fields(fields_of::<raw::RawImages>(), |_| Shape::Any),
        _ => Shape::Any,
    })
}

fn notifier_shape() -> Shape {
    Shape::Fields(fields_of::<raw::RawNotifier>(), |key| match key {
        "webhook" => Shape::Fields(fields_of::<raw::RawWebhook>(), |_| Shape::Any),
        "email" => Shape::Fields(fields_of::<raw::RawEmail>(), |_| Shape::Any),
        _ => Shape::Any,
    })
}

fn rule_shape() -> Shape {
    Shape::Fields(fields_of::<raw::RawRule>(), |key| match key {
        "detect" | "fix" => Shape::Fields(fields_of::<raw::RawSqlByDialect>(), |_| Shape::Any),
        "batch" => Shape::Fields(fields_of::<raw::RawBatch>(), |_| Shape::Any),
        "lock" => Shape::Fields(fields_of::<raw::RawLock>(), |_| Shape::Any),
        "backup" => Shape::Fields(fields_of::<raw::RawBackup>(), |_| Shape::Any),
        _ => Shape::Any,
    })
}

/// Which kind of file is read.
#[derive(Debug, Clone, Copy)]
pub(super) enum FileKind {
    /// `dbjanitor.yaml`.
    Config,
    /// A rule file.
    Rule,
}

/// Every unknown key in `text`, in file order; empty when the text is not
/// YAML at all (the parse error says so) or every key is known.
pub(super) fn unknown_keys(file: &Path, text: &str, kind: FileKind) -> Vec<ConfigError> {
    let Ok(tree) = serde_saphyr::from_str::<KeyTree>(text) else {
        return Vec::new();
    };
    let shape = match kind {
        FileKind::Config => config_shape(),
        FileKind::Rule => rule_shape(),
    };
    let mut errors = Vec::new();
    walk(file, &tree, &shape, &mut errors);
    errors.sort_by_key(|e| (e.location.line, e.location.column));
    errors
}

fn walk(file: &Path, tree: &KeyTree, shape: &Shape, errors: &mut Vec<ConfigError>) {
    let KeyTree::Map(entries) = tree else {
        return;
    };
    match shape {
        Shape::Any => {}
        Shape::Named(inner) => {
            for (_, value) in entries {
                walk(file, value, &inner(), errors);
            }
        }
        Shape::Fields(fields, inner) => {
            for (key, value) in entries {
                if fields.contains(&key.value.as_str()) {
                    walk(file, value, &inner(&key.value), errors);
                } else {
                    errors.push(ConfigError::at(
                        file,
                        key.referenced,
                        unknown_key_message(&key.value, fields),
                    ));
                }
            }
        }
    }
}

/// "unknown key `detcet`: did you mean `detect`?", or the list of keys when
/// nothing is close.
fn unknown_key_message(key: &str, fields: &[&str]) -> String {
    match closest(key, fields) {
        Some(near) => format!("unknown key `{key}`: did you mean `{near}`?"),
        None => format!("unknown key `{key}`; expected one of {}", fields.join(", ")),
    }
}

/// The known key nearest to `key` (transpositions count as one edit), if it
/// is near enough to be a typo: at most 2 edits, and fewer than half the key.
fn closest<'a>(key: &str, fields: &[&'a str]) -> Option<&'a str> {
    fields
        .iter()
        .map(|field| (strsim::osa_distance(key, field), *field))
        .filter(|(distance, _)| *distance <= 2 && *distance * 2 < key.chars().count().max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, field)| field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_lists_come_from_the_raw_structs() {
        assert!(fields_of::<raw::RawRule>().contains(&"max_rows"));
        assert!(fields_of::<raw::RawConfig>().contains(&"databases"));
        assert_eq!(
            fields_of::<raw::RawSqlByDialect>(),
            ["mysql", "postgres", "sqlite"]
        );
    }

    #[test]
    fn typos_get_a_suggestion_and_strangers_the_list() {
        let rule = fields_of::<raw::RawRule>();
        assert_eq!(closest("detcet", rule), Some("detect"));
        assert_eq!(closest("shedule", rule), Some("schedule"));
        assert_eq!(closest("max_row", rule), Some("max_rows"));
        assert_eq!(closest("frobnicate", rule), None);
        assert_eq!(closest("x", rule), None);
    }

    #[test]
    fn every_unknown_key_of_a_file_is_found_with_its_position() {
        let text = "name: a\ndatabase: main\ndetcet: SELECT 1\nmax_row: 5\nshedule: \"@hourly\"\nlock:\n  nme: x\n";
        let errors = unknown_keys(Path::new("r.yaml"), text, FileKind::Rule);
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "r.yaml:3:1: unknown key `detcet`: did you mean `detect`?",
                "r.yaml:4:1: unknown key `max_row`: did you mean `max_rows`?",
                "r.yaml:5:1: unknown key `shedule`: did you mean `schedule`?",
                "r.yaml:7:3: unknown key `nme`: did you mean `name`?",
            ]
        );
    }
}
