//! The regular expressions the API documents state are the value rules,
//! exactly: over arbitrary text (white space of every kind, control
//! characters, `@` and dots among the rest), a value passes its rule if and
//! only if it matches its pattern within its length.

use domain::values::{free_text, patterns, text};
use domain::{Currency, Email, Sku};
use proptest::prelude::*;
use regex::Regex;

/// Characters the rules treat apart, and any others.
fn tricky() -> impl Strategy<Value = String> {
    let special = prop::sample::select(vec![
        ' ', '\t', '\n', '\r', '\u{0b}', '\u{0c}', '\u{85}', '\u{a0}', '\u{1680}', '\u{2003}', '\u{2028}', '\u{202f}', '\u{3000}',
        '\u{1c}', '\u{0}', '\u{7f}', '\u{9f}', '\u{200b}', '\u{feff}', '@', '.', 'a', 'Z', '~', '!', '-', 'é', '😀',
    ]);
    let one = prop_oneof![3 => special, 1 => any::<char>()];
    prop::collection::vec(one, 0..12).prop_map(|chars| chars.into_iter().collect())
}

fn matches(pattern: &str, value: &str, max: usize) -> bool {
    Regex::new(pattern).expect("a valid pattern").is_match(value) && value.chars().count() <= max
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn text_rules_are_their_patterns(value in tricky(), max in 1usize..10) {
        prop_assert_eq!(text("f", &value, max).is_ok(), matches(patterns::TEXT, &value, max), "text {:?}", value);
        prop_assert_eq!(free_text("f", &value, max).is_ok(), matches(patterns::FREE_TEXT, &value, max), "free text {:?}", value);
    }

    #[test]
    fn emails_are_their_pattern(local in tricky(), host in tricky(), tld in tricky()) {
        for value in [format!("{local}@{host}.{tld}"), format!("{local}@{host}"), local.clone()] {
            prop_assert_eq!(Email::parse(&value).is_ok(), matches(patterns::EMAIL, &value, 254), "email {:?}", value);
        }
    }

    #[test]
    fn skus_and_currencies_are_their_patterns(value in tricky()) {
        prop_assert_eq!(Sku::parse(&value).is_ok(), matches(patterns::SKU, &value, 64), "sku {:?}", value);
        prop_assert_eq!(Currency::parse(&value).is_ok(), matches(patterns::CURRENCY, &value, 3), "currency {:?}", value);
    }
}

#[test]
fn lengths_count_characters() {
    let long = format!("{}@example.com", "é".repeat(242));
    assert_eq!(long.chars().count(), 254);
    assert!(Email::parse(&long).is_ok() && matches(patterns::EMAIL, &long, 254));
    let longer = format!("é{long}");
    assert!(Email::parse(&longer).is_err());
    assert!(Sku::parse(&"A".repeat(64)).is_ok() && Sku::parse(&"A".repeat(65)).is_err());
}
