use super::*;
use crate::config::IdentifierKind;
use crate::config::{EmptyPolicy, EventType, TimestampFormat, ValueType};
use crate::config::{
    FieldMapping, FieldSet, FieldSource, IdentifierSpec, MappingSpec, TimestampColumn,
};
use serde_json::json;

fn cols(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn row(vals: &[&str]) -> Vec<Value> {
    vals.iter().map(|s| Value::Text(s.to_string())).collect()
}

fn id(col: &str) -> IdentifierSpec {
    IdentifierSpec {
        kind: IdentifierKind::Id,
        column: col.into(),
    }
}

fn field(name: &str, col: &str, as_type: ValueType) -> FieldMapping {
    FieldMapping {
        name: name.into(),
        source: FieldSource::Column(col.into()),
        as_type,
        format: TimestampFormat::Auto,
        timezone: None,
        empty: EmptyPolicy::Skip,
    }
}

#[test]
fn identify_maps_typed_attributes_and_skips_empty_cells() {
    let spec = MappingSpec::Identify {
        identifier: id("customer_id"),
        attributes: FieldSet::Explicit(vec![
            field("email", "email", ValueType::Auto),
            field("created_at", "signup_at", ValueType::Timestamp),
            field("seats", "seats", ValueType::Number),
            field("plan", "plan", ValueType::Auto),
        ]),
        timestamp: None,
        update_only: false,
    };
    let m = Mapper::new(
        "people",
        &spec,
        &cols(&["customer_id", "email", "signup_at", "seats", "plan"]),
    )
    .unwrap();
    let out = m
        .map(&row(&["u 1", "a@x.com", "2023-11-14T22:13:20Z", "3", ""]))
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<J>(&out.encoded).unwrap(),
        json!({"type":"person","identifiers":{"id":"u 1"},"action":"identify",
               "attributes":{"email":"a@x.com","created_at":1700000000,"seats":3}})
    );
}

#[test]
fn omitted_attributes_send_every_other_non_empty_column_and_null_policy_clears() {
    let spec = MappingSpec::Identify {
        identifier: id("id"),
        attributes: FieldSet::AllOtherColumns {
            empty: EmptyPolicy::Null,
        },
        timestamp: Some(TimestampColumn {
            column: "updated".into(),
            format: TimestampFormat::Unix,
            timezone: None,
        }),
        update_only: true,
    };
    let m = Mapper::new("j", &spec, &cols(&["id", "a", "b", "updated"])).unwrap();
    let out = m.map(&row(&["1", "x", "", "1700000000"])).unwrap();
    assert_eq!(
        serde_json::from_slice::<J>(&out.encoded).unwrap(),
        json!({"type":"person","identifiers":{"id":"1"},"action":"identify","timestamp":1700000000,
               "attributes":{"a":"x","b":null,"_update":true}})
    );
}

#[test]
fn events_get_deterministic_ulids_and_unix_timestamps() {
    let spec = MappingSpec::Track {
        who: crate::config::EventSubject::Person(id("customer_id")),
        name: crate::config::EventName::Fixed("purchase".into()),
        event_type: EventType::Event,
        timestamp: Some(TimestampColumn {
            column: "at".into(),
            format: TimestampFormat::Auto,
            timezone: None,
        }),
        key_columns: vec!["order_id".into()],
        data: FieldSet::Explicit(vec![field("total", "total", ValueType::Number)]),
    };
    let c = cols(&["customer_id", "order_id", "at", "total"]);
    let m = Mapper::new("orders", &spec, &c).unwrap();
    let a = m
        .map(&row(&["7", "o-1", "2023-11-14 22:13:20", "9.5"]))
        .unwrap();
    let b = Mapper::new("orders", &spec, &c)
        .unwrap()
        .map(&row(&["7", "o-1", "2023-11-14 22:13:20", "9.5"]))
        .unwrap();
    assert_eq!(a.encoded, b.encoded);
    let v: J = serde_json::from_slice(&a.encoded).unwrap();
    assert_eq!(v["timestamp"], json!(1_700_000_000));
    assert_eq!(v["attributes"], json!({"total": 9.5}));
    assert_eq!(
        v["id"],
        json!(event_id::event_id(
            "orders",
            "o-1",
            "purchase",
            Some(1_700_000_000)
        ))
    );
}

#[test]
fn bad_rows_are_rejected_with_a_reason_naming_the_column() {
    let spec = MappingSpec::Identify {
        identifier: id("id"),
        attributes: FieldSet::AllOtherColumns {
            empty: EmptyPolicy::Skip,
        },
        timestamp: None,
        update_only: false,
    };
    let m = Mapper::new("j", &spec, &cols(&["id", "bio"])).unwrap();
    assert!(
        m.map(&row(&["", "x"]))
            .unwrap_err()
            .0
            .contains("identifier column `id` is empty")
    );
    let long = "é".repeat(501);
    let e = m.map(&row(&["1", &long])).unwrap_err().0;
    assert!(e.contains("attribute \"bio\" is 1002 bytes"), "{e}");
    assert!(
        m.map(&row(&[&"x".repeat(151), "b"]))
            .unwrap_err()
            .0
            .contains("150")
    );

    let wide: Vec<String> = std::iter::once("id".to_string())
        .chain((0..301).map(|i| format!("c{i}")))
        .collect();
    let m = Mapper::new("j", &spec, &wide).unwrap();
    let vals: Vec<Value> = (0..302).map(|i| Value::Text(format!("v{i}"))).collect();
    assert!(m.map(&vals).unwrap_err().0.contains("301 attributes"));

    let spec = MappingSpec::Track {
        who: crate::config::EventSubject::Person(id("id")),
        name: crate::config::EventName::Column("name".into()),
        event_type: EventType::Event,
        timestamp: Some(TimestampColumn {
            column: "at".into(),
            format: TimestampFormat::Auto,
            timezone: None,
        }),
        key_columns: vec![],
        data: FieldSet::Explicit(vec![field("blob", "blob", ValueType::Auto)]),
    };
    let m = Mapper::new("j", &spec, &cols(&["id", "name", "at", "blob"])).unwrap();
    assert!(
        m.map(&row(&["1", &"n".repeat(101), "1700000000", ""]))
            .unwrap_err()
            .0
            .contains("event name")
    );
    assert!(
        m.map(&row(&["1", "e", "1700000000000", ""]))
            .unwrap_err()
            .0
            .contains("milliseconds?")
    );
    let e = m
        .map(&row(&["1", "e", "1700000000", &"b".repeat(33_000)]))
        .unwrap_err()
        .0;
    assert!(e.contains("per item"), "{e}");
}

#[test]
fn unknown_columns_are_reported_with_the_available_ones() {
    let spec = MappingSpec::Delete {
        identifier: id("user"),
        action: crate::config::DeleteAction::Delete,
    };
    let e = Mapper::new("j", &spec, &cols(&["id", "email"]))
        .err()
        .unwrap();
    assert_eq!(e.column, "user");
    assert!(e.to_string().contains("it has: id, email"));
}

#[test]
fn a_pattern_and_a_zone_are_checked_when_the_job_file_is_loaded() {
    let load = |format: &str, zone: &str| {
        let text = format!(
            "source:\n  csv: {{ path: people.csv }}\nidentify:\n  identifier: {{ id: id }}\n  timestamp: {{ column: changed, format: \"{format}\", timezone: {zone} }}\n  attributes:\n    born: {{ column: born, as: timestamp, format: \"%d.%m.%Y\", timezone: Europe/Paris }}\n"
        );
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("people.yaml");
        std::fs::write(&path, text).expect("write the job file");
        crate::config::load_job(&path, &|_| None).map_err(|e| format!("{e:?}"))
    };
    let job = load("%m/%d/%Y %H:%M", "America/New_York").expect("a valid job");
    let crate::config::JobKind::Push(push) = &job.kind else {
        panic!("a push job")
    };
    let MappingSpec::Identify {
        timestamp: Some(ts),
        ..
    } = &push.mapping
    else {
        panic!("an identify job with a timestamp")
    };
    assert_eq!(ts.format, TimestampFormat::Pattern("%m/%d/%Y %H:%M".into()));
    assert_eq!(ts.timezone, Some(chrono_tz::America::New_York));

    let e = load("%m/%d/%Y %H:%M", "Europe/Pariss").expect_err("an unknown zone");
    assert!(e.contains("unknown time zone `Europe/Pariss`"), "{e}");
    let e = load("%m/%d/%Y %Q", "UTC").expect_err("a bad pattern");
    assert!(
        e.contains("`%m/%d/%Y %Q` is not a valid strftime pattern"),
        "{e}"
    );
    let e = load("american", "UTC").expect_err("an unknown format name");
    assert!(e.contains("unknown timestamp format `american`"), "{e}");
}
