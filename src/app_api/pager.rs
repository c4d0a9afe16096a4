//! The one App API pager: segments, campaigns and segment membership all page the same way.
//!
//! Owns: `start`/`next` bookkeeping — pass the last `next` as `start`, stop when `next` is
//! missing, `null`, `""` or one already used (a server handing back the same token would
//! otherwise loop forever; customerio-api.md §9) — and counting pages.
//! Must not: know what a page holds beyond [`PageBody`], or store anything: a caller either
//! streams pages on ([`Pager::next_page`]) or collects a short listing ([`Pager::all`]).

use std::collections::HashSet;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::{AppClient, AppError};
use crate::http::RunCounters;

/// One page of a listing, as the API answers it.
pub(crate) trait PageBody: DeserializeOwned {
    type Item;
    /// The page's items and its `next` token; `Err` names what could not be read.
    fn into_page(self) -> Result<(Vec<Self::Item>, Option<String>), String>;
}

/// Pages through one listing (`path` plus a fixed `query`), one request per page.
pub(crate) struct Pager<B: PageBody> {
    client: AppClient,
    path: String,
    /// Sent with every page (`limit`); `start` is added from the previous page's `next`.
    query: Vec<(&'static str, String)>,
    paging: Paging,
    done: bool,
    pages: u32,
    _body: PhantomData<fn() -> B>,
}

impl<B: PageBody> Pager<B> {
    pub(crate) fn new(client: AppClient, path: String, query: Vec<(&'static str, String)>) -> Self {
        Self {
            client,
            path,
            query,
            paging: Paging::default(),
            done: false,
            pages: 0,
            _body: PhantomData,
        }
    }

    /// Pages fetched so far.
    pub(crate) fn pages(&self) -> u32 {
        self.pages
    }

    /// The next page's items, or `None` after the last page.
    pub(crate) async fn next_page(
        &mut self,
        counters: &Arc<RunCounters>,
        cancel: &CancellationToken,
    ) -> Result<Option<Vec<B::Item>>, AppError> {
        if self.done {
            return Ok(None);
        }
        let mut query = self.query.clone();
        query.extend(self.paging.query());
        let body: B = self
            .client
            .get(&self.path, &query, counters, cancel)
            .await?;
        let (items, next) = body.into_page().map_err(|message| AppError::Decode {
            what: format!("GET {}", self.path),
            message,
            body: String::new(),
        })?;
        self.pages += 1;
        self.done = !self.paging.advance(next);
        Ok(Some(items))
    }

    /// Every item of every page (for listings that fit in memory: segments, campaigns).
    pub(crate) async fn all(
        mut self,
        counters: &Arc<RunCounters>,
        cancel: &CancellationToken,
    ) -> Result<Vec<B::Item>, AppError> {
        let mut out = Vec::new();
        while let Some(items) = self.next_page(counters, cancel).await? {
            out.extend(items);
        }
        Ok(out)
    }
}

/// `start`/`next` bookkeeping.
#[derive(Debug, Default)]
struct Paging {
    start: Option<String>,
    seen: HashSet<String>,
}

impl Paging {
    fn query(&self) -> Vec<(&'static str, String)> {
        self.start.iter().map(|s| ("start", s.clone())).collect()
    }

    /// Takes the answer's `next`; false when there are no more pages.
    fn advance(&mut self, next: Option<String>) -> bool {
        match next {
            Some(token) if self.seen.insert(token.clone()) => {
                self.start = Some(token);
                true
            }
            Some(token) => {
                tracing::warn!(next = %token, "The App API repeated a paging token; treating the list as complete.");
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_stops_on_missing_or_repeated_tokens() {
        let mut p = Paging::default();
        assert!(p.query().is_empty());
        assert!(p.advance(Some("a".into())));
        assert_eq!(p.query(), [("start", "a".to_string())]);
        assert!(p.advance(Some("b".into())));
        assert!(!p.advance(Some("a".into())));
        assert!(!Paging::default().advance(None));
    }
}
