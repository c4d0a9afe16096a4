//! Reading App API answers: segment and campaign lists, membership pages, v1 metrics.
//!
//! Owns: the tolerant shapes of customerio-api.md §9 — unknown fields ignored, lists that come
//! back `null` read as empty, `next` as a string or a number, scalar fields of an unexpected
//! type read leniently — and keeping every segment and campaign object exactly as returned
//! (`raw`), so fields we have no column for are not lost.
//! Must not: make requests, decide what a status means (that is `mod.rs`) or touch a database.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// `null` and a missing field both read as an empty list.
pub(crate) fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// A paging token: a string (`"MDox"`) or, as the 2022 reference typed it, a number.
/// Missing, `null` and `""` all mean "no more pages".
pub(crate) fn next_token<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s).filter(|s| !s.is_empty())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(serde::de::Error::custom(format!(
            "`next` should be a string or a number, not {other}"
        ))),
    }
}

/// A scalar read as text: strings as they are (empty = absent), numbers and booleans written
/// out, anything else absent.
pub(crate) fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Value>::deserialize(d)?.as_ref().and_then(text))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite())
                .map(|f| f.round() as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_i64().map(|i| i != 0),
        Value::String(s) => match s.as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// `tags`: `[string]` or `null`; non-string items are written out, empty ones dropped.
fn string_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items.iter().filter_map(text).collect(),
        _ => Vec::new(),
    }
}

/// `{"segments":[…]}`. The list itself must be there (`null` is fine): a 200 without it is
/// not a segment list, and reading it as "no segments" would mark every segment deleted.
#[derive(Debug, Deserialize)]
pub(crate) struct SegmentList {
    #[serde(deserialize_with = "null_as_empty")]
    pub segments: Vec<Value>,
    /// Not documented for this list; followed with `?start=` if it ever appears.
    #[serde(default, deserialize_with = "next_token")]
    pub next: Option<String>,
}

/// `{"campaigns":[…]}`; the list must be there, as for [`SegmentList`].
#[derive(Debug, Deserialize)]
pub(crate) struct CampaignList {
    #[serde(deserialize_with = "null_as_empty")]
    pub campaigns: Vec<Value>,
    #[serde(default, deserialize_with = "next_token")]
    pub next: Option<String>,
}

impl super::pager::PageBody for SegmentList {
    type Item = Segment;
    fn into_page(self) -> Result<(Vec<Segment>, Option<String>), String> {
        let items = self.segments.into_iter().map(Segment::from_value);
        Ok((items.collect::<Result<_, _>>()?, self.next))
    }
}

impl super::pager::PageBody for CampaignList {
    type Item = Campaign;
    fn into_page(self) -> Result<(Vec<Campaign>, Option<String>), String> {
        let items = self.campaigns.into_iter().map(Campaign::from_value);
        Ok((items.collect::<Result<_, _>>()?, self.next))
    }
}

/// One segment (`segmentResponseObject`): the columns cio-sync keeps, and the object itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub id: i64,
    pub name: Option<String>,
    pub description: Option<String>,
    /// `dynamic` or `manual`.
    pub segment_type: Option<String>,
    /// `events`, `build`, `events_queued`, `build_queued` or `finished`.
    pub state: Option<String>,
    pub tags: Vec<String>,
    /// Unix seconds.
    pub created_at: Option<i64>,
    /// Unix seconds.
    pub updated_at: Option<i64>,
    pub raw: Value,
}

impl Segment {
    /// Reads one list item; only an integer `id` is required.
    pub fn from_value(raw: Value) -> Result<Self, String> {
        let id = raw.get("id").and_then(integer).ok_or_else(|| {
            format!(
                "a segment without an integer `id`: {}",
                crate::http::excerpt(&raw.to_string())
            )
        })?;
        let s = |k: &str| raw.get(k).and_then(text);
        let i = |k: &str| raw.get(k).and_then(integer);
        Ok(Self {
            id,
            name: s("name"),
            description: s("description"),
            segment_type: s("type"),
            state: s("state"),
            tags: string_list(raw.get("tags")),
            created_at: i("created_at"),
            updated_at: i("updated_at"),
            raw,
        })
    }
}

/// One campaign (`campaignObject`): its scalar fields as columns, and the object itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Campaign {
    pub id: i64,
    pub deduplicate_id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    /// The trigger type (deprecated by Customer.io, still sent).
    pub campaign_type: Option<String>,
    /// `running`, `draft` or `stopped`.
    pub state: Option<String>,
    pub active: Option<bool>,
    pub tags: Vec<String>,
    /// `created`, Unix seconds.
    pub created_at: Option<i64>,
    /// `updated`, Unix seconds.
    pub updated_at: Option<i64>,
    /// `first_started`, Unix seconds.
    pub first_started_at: Option<i64>,
    pub raw: Value,
}

impl Campaign {
    /// Reads one list item; only an integer `id` is required.
    pub fn from_value(raw: Value) -> Result<Self, String> {
        let id = raw.get("id").and_then(integer).ok_or_else(|| {
            format!(
                "a campaign without an integer `id`: {}",
                crate::http::excerpt(&raw.to_string())
            )
        })?;
        let s = |k: &str| raw.get(k).and_then(text);
        let i = |k: &str| raw.get(k).and_then(integer);
        Ok(Self {
            id,
            deduplicate_id: s("deduplicate_id"),
            name: s("name"),
            description: s("description"),
            campaign_type: s("type"),
            state: s("state"),
            active: raw.get("active").and_then(boolean),
            tags: string_list(raw.get("tags")),
            created_at: i("created"),
            updated_at: i("updated"),
            first_started_at: i("first_started"),
            raw,
        })
    }
}

/// `GET /v1/segments/{id}/membership`: `identifiers` is preferred to `ids` (a member without
/// an `id` shows there as `""`), so `ids` is not read.
#[derive(Debug, Deserialize)]
pub(crate) struct MembershipPage {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub identifiers: Vec<Member>,
    #[serde(default, deserialize_with = "next_token")]
    pub next: Option<String>,
}

impl super::pager::PageBody for MembershipPage {
    type Item = Member;
    fn into_page(self) -> Result<(Vec<Member>, Option<String>), String> {
        Ok((self.identifiers, self.next))
    }
}

/// One member as the membership endpoint lists them; any field may be `null`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Member {
    #[serde(default, deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub email: Option<String>,
    /// Set by Customer.io for every person; what a membership row is keyed by.
    #[serde(default, deserialize_with = "lenient_string")]
    pub cio_id: Option<String>,
}

/// `{"metric":{"series":{"sent":[0,4,9],…}}}`, index 0 oldest.
#[derive(Debug, Deserialize)]
pub(crate) struct MetricsBody {
    #[serde(default)]
    metric: Option<MetricObject>,
}

#[derive(Debug, Deserialize)]
struct MetricObject {
    #[serde(default)]
    series: Option<BTreeMap<String, Option<Vec<Value>>>>,
}

/// Metric name → one value per period, index 0 oldest; a point that is not a number is `None`.
pub(crate) type Series = BTreeMap<String, Vec<Option<i64>>>;

impl MetricsBody {
    pub(crate) fn into_series(self) -> Series {
        self.metric
            .and_then(|m| m.series)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, points)| {
                (
                    name,
                    points.unwrap_or_default().iter().map(integer).collect(),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn membership_pages_accept_null_lists_and_string_or_number_next() {
        let p: MembershipPage = serde_json::from_value(json!({
            "identifiers": null, "ids": null, "next": "", "segment_id": 7, "surprise": {"x": 1}
        }))
        .unwrap();
        assert!(p.identifiers.is_empty());
        assert_eq!(p.next, None);
        let p: MembershipPage = serde_json::from_value(json!({"next": 1000})).unwrap();
        assert_eq!(p.next.as_deref(), Some("1000"));
        let p: MembershipPage = serde_json::from_value(json!({
            "identifiers": [{"email": null, "id": 2, "cio_id": "a3000001"}], "next": "MDox"
        }))
        .unwrap();
        assert_eq!(
            p.identifiers,
            [Member {
                id: Some("2".into()),
                email: None,
                cio_id: Some("a3000001".into())
            }]
        );
        assert_eq!(p.next.as_deref(), Some("MDox"));
        assert!(serde_json::from_value::<MembershipPage>(json!({"next": {"a": 1}})).is_err());
    }

    #[test]
    fn a_list_answer_must_name_its_list_but_may_hold_null() {
        let l: SegmentList = serde_json::from_value(json!({"segments": null})).unwrap();
        assert!(l.segments.is_empty());
        assert!(serde_json::from_value::<SegmentList>(json!({})).is_err());
    }

    #[test]
    fn segments_and_campaigns_read_leniently_and_keep_the_raw_object() {
        let raw = json!({"id": 7, "name": "Manual", "description": "", "state": "finished", "type": "manual",
            "tags": null, "created_at": 1552341937, "updated_at": "1552341938", "progress": null});
        let s = Segment::from_value(raw.clone()).unwrap();
        assert_eq!(s.id, 7);
        assert_eq!(s.description, None);
        assert_eq!(s.tags, Vec::<String>::new());
        assert_eq!(s.updated_at, Some(1552341938));
        assert_eq!(s.raw, raw);
        assert!(Segment::from_value(json!({"name": "no id"})).is_err());

        let c = Campaign::from_value(
            json!({"id": "5", "active": true, "tags": ["a", 1], "created": 1.0}),
        )
        .unwrap();
        assert_eq!((c.id, c.active, c.created_at), (5, Some(true), Some(1)));
        assert_eq!(c.tags, ["a", "1"]);
    }

    #[test]
    fn metric_series_tolerate_null_and_odd_points() {
        let m: MetricsBody = serde_json::from_value(
            json!({"metric": {"series": {"sent": [0, 4, null], "opened": null}}}),
        )
        .unwrap();
        let s = m.into_series();
        assert_eq!(s["sent"], [Some(0), Some(4), None]);
        assert!(s["opened"].is_empty());
        let m: MetricsBody = serde_json::from_value(json!({"metric": null})).unwrap();
        assert!(m.into_series().is_empty());
    }
}

/// `GET /v1/object_types`: `{"types":[{"id":"1","name":"Accounts",…}]}` (the envelope is
/// UNVERIFIED by Customer.io's docs: `types` and `object_types` are both read, and ids as
/// strings or numbers).
#[derive(Debug, Deserialize)]
pub(crate) struct ObjectTypeList {
    #[serde(default, deserialize_with = "null_as_empty", alias = "object_types")]
    pub types: Vec<ObjectType>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ObjectType {
    #[serde(default, deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub name: Option<String>,
}
