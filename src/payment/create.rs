//! Create: route, bind, call the bound channel (failing over only while nothing was sent),
//! store the outcome; and the idempotent replay of a create.

use super::*;
use crate::routing::{SkipReason, Why};
use crate::store::{Inserted, Over, QuotaGuard};

impl PaymentService {
    pub async fn create(
        &self,
        routes: &Routes<'_>,
        shop_id: &str,
        req: NewPayment,
    ) -> Result<CreateOutcome, PaymentError> {
        let now = now_ms();
        let request = req.canonical();
        let request_hash = request_hash(shop_id, &request);
        let facts = PaymentFacts {
            merchant: &req.merchant_id,
            shop: shop_id,
            method: req.method,
            amount: req.amount,
            currency: &req.currency,
            metadata: &req.metadata,
            out_trade_no: &req.out_trade_no,
            china_minute: china_minute(now),
        };
        let decided = match req.expires_at {
            Some(t) if t.unix_timestamp() * 1000 <= now + MIN_EXPIRY_MS => {
                Err(PaymentError::Invalid {
                    field: "expires_at",
                    message: "a new order's expires_at must be more than a minute ahead".into(),
                })
            }
            _ => routes
                .rules
                .decide(&facts, &*self.live)
                .map_err(PaymentError::from),
        };
        let refusal = match decided {
            Ok(decision) => {
                for skip in &decision.skipped {
                    self.metrics
                        .skipped(decision.rule_label(), skip.channel, skip.reason);
                }
                let rule = decision.rule_label().to_string();
                // Channels this order probes: their successes may readmit them.
                let probes: Vec<String> = decision
                    .candidates
                    .iter()
                    .filter(|p| matches!(p.why, Why::Probe | Why::LastResort))
                    .map(|p| p.channel.to_string())
                    .collect();
                let mut left: Vec<String> = decision
                    .candidates
                    .iter()
                    .map(|p| p.channel.to_string())
                    .collect();
                left.reverse();
                match self
                    .bind(
                        routes,
                        shop_id,
                        &req,
                        &request,
                        &request_hash,
                        rule,
                        left,
                        now,
                    )
                    .await?
                {
                    Bound::Fresh(rec, rest) => {
                        return answer_created(
                            |fresh| self.for_the_payer(routes, fresh),
                            self.attempt(routes, rec, &req, rest, &probes).await,
                        );
                    }
                    Bound::Existing(existing) => {
                        return self
                            .replay(routes, existing, shop_id, &request_hash, &req)
                            .await;
                    }
                    Bound::Nowhere(refusal) => refusal,
                }
            }
            Err(refusal) => refusal,
        };
        // A replay of an existing order still answers from its record, whatever the rules,
        // the channels' state or the clock say now.
        match self
            .store
            .get_payment(&req.merchant_id, &req.out_trade_no)
            .await?
        {
            Some(existing) => {
                self.replay(routes, existing, shop_id, &request_hash, &req)
                    .await
            }
            None => Err(refusal),
        }
    }

    /// Binds a new order to the first candidate that will take it (`left`, last first) and
    /// writes the record; nothing is sent yet. An existing record of the order wins.
    #[allow(clippy::too_many_arguments)]
    async fn bind(
        &self,
        routes: &Routes<'_>,
        shop_id: &str,
        req: &NewPayment,
        request: &serde_json::Value,
        request_hash: &str,
        rule: String,
        mut left: Vec<String>,
        now: i64,
    ) -> Result<Bound, PaymentError> {
        let sub = routes.sub_merchant(&req.merchant_id);
        while let Some(name) = left.pop() {
            let Some(channel) = routes.channels.get(&name) else {
                tracing::error!(channel = %name, rule = %rule, "a routed channel is not configured");
                continue;
            };
            let rec = PaymentRecord {
                payment_id: new_id("pay"),
                merchant_id: req.merchant_id.clone(),
                shop_id: shop_id.to_string(),
                out_trade_no: req.out_trade_no.clone(),
                amount: req.amount,
                currency: req.currency.clone(),
                method: req.method,
                status: PaymentStatus::Pending,
                channel: name,
                account: Some(channel.account(&sub)),
                rule: rule.clone(),
                action: None,
                provider_trade_no: None,
                refunded_amount: 0,
                request_hash: request_hash.to_string(),
                request: request.clone(),
                error_code: None,
                error_message: None,
                attempt_until: Some(now + claim_window_ms(channel)),
                created_at: now,
                updated_at: now,
                paid_at: None,
                expires_at: req
                    .expires_at
                    .map_or(now + DEFAULT_EXPIRY_MS, |t| t.unix_timestamp() * 1000),
                version: 0,
                late: false,
            };
            let guard = match self.quota_guard(channel, &rec) {
                Ok(guard) => guard,
                Err(over) => {
                    self.over_quota(&rec, &over);
                    continue;
                }
            };
            return Ok(
                match self
                    .store
                    .insert_payment_within(&rec, guard.as_ref())
                    .await?
                {
                    Inserted::New => {
                        self.metrics
                            .decisions
                            .with_label_values(&[rec.rule.as_str(), rec.channel.as_str()])
                            .inc();
                        left.reverse();
                        Bound::Fresh(rec, left)
                    }
                    Inserted::Existing(existing) => Bound::Existing(*existing),
                    Inserted::OverQuota(over) => {
                        self.over_quota(&rec, &over);
                        continue;
                    }
                },
            );
        }
        tracing::warn!(rule = %rule, merchant_id = %req.merchant_id, "every candidate was passed over; nothing sent");
        Ok(Bound::Nowhere(PaymentError::NoChannelNow(
            "no channel can take this payment now: every channel its route offers is drained, \
             eliminated or over its quota; nothing was sent"
                .into(),
        )))
    }

    /// The quota `rec`'s account must fit under at its channel, if the channel has one: `Err`
    /// when the payment alone is over `single`.
    fn quota_guard(
        &self,
        channel: &Channel,
        rec: &PaymentRecord,
    ) -> Result<Option<QuotaGuard>, Over> {
        match (&channel.settings.quota, &rec.account) {
            (Some(quota), Some(account)) => {
                super::quota::guard_for(quota, account, rec.amount, rec.created_at)
            }
            _ => Ok(None),
        }
    }

    fn over_quota(&self, rec: &PaymentRecord, over: &Over) {
        tracing::info!(channel = %rec.channel, rule = %rec.rule, period = over.period.as_str(), used = over.used, limit = over.limit, amount = rec.amount, "candidate over its quota; passed over, nothing sent");
        self.metrics
            .skipped(&rec.rule, &rec.channel, SkipReason::Quota);
    }

    /// A stored record as its creator's answer shows it: the stored action lacks what only
    /// the payer may see (an ISV order's `app_auth_token` and the signature over it), which
    /// the channel serving the order puts back (none serving: the order's operations are
    /// refused anyway, and the action is shown as stored).
    fn for_the_payer(&self, routes: &Routes<'_>, mut rec: PaymentRecord) -> PaymentRecord {
        let sub = routes.sub_merchant(&rec.merchant_id);
        let serving =
            routes
                .channels
                .serving(&rec.channel, routes.bound_account(&rec).as_ref(), &sub);
        if let (Some(stored), Some(ch)) = (&rec.action, serving) {
            match ch.payer_action(stored, &sub) {
                Ok(action) => rec.action = Some(action),
                Err(e) => {
                    tracing::warn!(payment_id = %rec.payment_id, channel = %ch.name(), error = %e, "cannot rebuild the payer action of a replay")
                }
            }
        }
        rec
    }

    async fn replay(
        &self,
        routes: &Routes<'_>,
        mut existing: PaymentRecord,
        shop_id: &str,
        hash: &str,
        req: &NewPayment,
    ) -> Result<CreateOutcome, PaymentError> {
        // Another shop's order: refused before anything of it (its state, its action, whether
        // a request of it is in flight) can show.
        if existing.shop_id != shop_id {
            return Err(PaymentError::OutTradeNoTaken);
        }
        let now = now_ms();
        check_replay(
            same_request(&existing.request_hash, hash, &req.canonical()),
            existing.attempt_until,
            existing.status == PaymentStatus::Failed,
            (&existing.error_code, &existing.error_message),
        )?;
        if existing.action.is_some() || existing.status.is_final() {
            self.metrics.outcome(&existing, "replayed");
            return Ok(CreateOutcome::Replayed(
                self.for_the_payer(routes, existing),
            ));
        }
        // The last attempt ended without an answer (timeout, nothing sent, a crash): take the
        // record over and send the same order to the same account again.
        let (channel, _) = self.bound(routes, &existing, "create")?;
        existing.attempt_until = Some(now + claim_window_ms(channel));
        existing.updated_at = now;
        if !self.store.update_payment(&mut existing).await? {
            return Err(PaymentError::InProgress);
        }
        answer_created(
            |fresh| self.for_the_payer(routes, fresh),
            self.attempt(routes, existing, req, Vec::new(), &[]).await,
        )
    }

    /// Sends the create to the bound account; fails over only while nothing was sent.
    /// Holds the record's claim throughout.
    async fn attempt(
        &self,
        routes: &Routes<'_>,
        mut rec: PaymentRecord,
        req: &NewPayment,
        fallback: Vec<String>,
        probes: &[String],
    ) -> Result<PaymentRecord, PaymentError> {
        let mut fallback = fallback.into_iter();
        loop {
            // Ours as written with the binding (or the failover's rebinding): our writes
            // merge only while the record still holds it.
            let claim = rec.attempt_until;
            let (channel, sub) = match self.bound(routes, &rec, "create") {
                Ok(b) => b,
                Err(refusal) => {
                    self.release(rec).await;
                    return Err(refusal);
                }
            };
            let notify_url = format!("{}/notify/{}", routes.public_base_url, rec.channel);
            let expires_at = OffsetDateTime::from_unix_timestamp(rec.expires_at / 1000)
                .map_err(|_| StoreError::Corrupt(format!("expires_at {}", rec.expires_at)))?;
            let order = OrderRequest {
                out_trade_no: &req.out_trade_no,
                amount: req.amount,
                currency: &req.currency,
                method: req.method,
                description: &req.description,
                expires_at,
                notify_url: &notify_url,
                openid: req.openid.as_deref(),
                client_ip: req.client_ip.as_deref(),
                attach: req.attach.as_deref(),
                return_url: req.return_url.as_deref(),
                sub: &sub,
                probe: probes.contains(&rec.channel),
            };
            let result = channel.create(&order).await;
            rec.updated_at = now_ms();
            let error = match result {
                Ok(created) => {
                    // Stored without what only the payer may carry (an ISV token); the
                    // create answer gets the whole action.
                    rec.action = Some(channel.storable_action(&created.action));
                    rec.provider_trade_no =
                        created.provider_trade_no.or(rec.provider_trade_no.take());
                    rec.status = PaymentStatus::Pending;
                    rec.error_code = None;
                    rec.error_message = None;
                    rec.attempt_until = None;
                    if let Err(e) = self.save(&mut rec, claim).await {
                        return Err(unrecorded(rec, e));
                    }
                    self.metrics.outcome(&rec, "created");
                    self.converted(&rec.channel, false);
                    rec.action = Some(created.action);
                    return Ok(rec);
                }
                Err(e) => e,
            };
            if error.nothing_sent() {
                let skipped = match error.kind {
                    ErrorKind::CircuitOpen => Some(SkipReason::Circuit),
                    ErrorKind::ChannelLimit => Some(SkipReason::Limit),
                    _ => None,
                };
                if let Some(reason) = skipped {
                    self.metrics.skipped(&rec.rule, &rec.channel, reason);
                }
                let from = rec.channel.clone();
                if self
                    .fail_over(routes, &mut rec, claim, &mut fallback, &sub, &error)
                    .await?
                {
                    channel.metrics().retried(&from, "failover");
                    continue;
                }
                return Err(self.fail(rec, error, PaymentStatus::Pending).await);
            }
            return match error.kind {
                // The provider's verified, final refusal: nothing was created.
                ErrorKind::Rejected(_) | ErrorKind::AccountRefused(_) => {
                    Err(self.fail(rec, error, PaymentStatus::Failed).await)
                }
                // Paid already, or the request may have reached the channel: learn what the channel
                // has by a verified query (ARCHITECTURE.md, "What is safe to retry") before
                // answering. Never fail over, never mark such an order failed.
                _ => self.learn_after(routes, rec, error, channel, &sub).await,
            };
        }
    }

    /// Rebinds the claimed record to the next candidate left that will take it (a channel of
    /// this config, with room in its account's quota), for a call that sent nothing.
    /// Whether one did; `false` leaves the record as it was.
    async fn fail_over(
        &self,
        routes: &Routes<'_>,
        rec: &mut PaymentRecord,
        claim: Option<i64>,
        left: &mut std::vec::IntoIter<String>,
        sub: &SubMerchant,
        error: &ChannelError,
    ) -> Result<bool, PaymentError> {
        let (from_channel, from_account) = (rec.channel.clone(), rec.account.clone());
        for next in left.by_ref() {
            let Some(next_channel) = routes.channels.get(&next).cloned() else {
                continue;
            };
            rec.account = Some(next_channel.account(sub));
            rec.channel = next;
            // The next channel's call gets a claim of its own length.
            rec.attempt_until = Some(now_ms() + claim_window_ms(&next_channel));
            let bound = match self.quota_guard(&next_channel, rec) {
                Ok(guard) => self.commits.rebind(rec, claim, guard.as_ref()).await?,
                Err(over) => Err(over),
            };
            match bound {
                Ok(()) => {
                    tracing::warn!(channel = %from_channel, next = %rec.channel, %error, "nothing reached the channel; failing over");
                    let mut was = rec.clone();
                    was.channel = from_channel;
                    self.metrics.outcome(&was, "failed_over");
                    return Ok(true);
                }
                Err(over) => self.over_quota(rec, &over),
            }
        }
        rec.channel = from_channel;
        rec.account = from_account;
        rec.attempt_until = claim;
        Ok(false)
    }

    /// After a create that may have reached the channel (or was answered "paid"): a paid
    /// order becomes `succeeded`; anything else leaves it `unknown` for the shop to retry.
    async fn learn_after(
        &self,
        routes: &Routes<'_>,
        rec: PaymentRecord,
        error: ChannelError,
        channel: &Channel,
        sub: &SubMerchant,
    ) -> Result<PaymentRecord, PaymentError> {
        match channel.query(&rec.out_trade_no, sub).await {
            Ok(state) if state.status == PaymentStatus::Succeeded => {
                let shown = rec.clone();
                self.apply_state(routes, rec, state, channel, Claim::Ours)
                    .await
                    .map_err(|e| unrecorded(shown, e))
            }
            Ok(state) => {
                tracing::info!(payment_id = %rec.payment_id, channel = %rec.channel, provider_state = %state.provider_state, "after an uncertain create the channel reports the order unpaid");
                Err(self.fail(rec, error, PaymentStatus::Unknown).await)
            }
            Err(q) => {
                tracing::warn!(payment_id = %rec.payment_id, channel = %rec.channel, error = %q, "query after an uncertain create failed");
                Err(self.fail(rec, error, PaymentStatus::Unknown).await)
            }
        }
    }
}

/// Where a new order was bound.
enum Bound {
    /// Written, bound to its first candidate; the rest (in order) take it only while
    /// nothing was sent.
    Fresh(PaymentRecord, Vec<String>),
    /// The order exists already: a replay.
    Existing(PaymentRecord),
    /// Every candidate was passed over.
    Nowhere(PaymentError),
}

/// A create's answer: the record its call left, or — when another request took the order over
/// while the call was out — that request's record, as a replay would answer it.
fn answer_created(
    answer: impl FnOnce(PaymentRecord) -> PaymentRecord,
    attempted: Result<PaymentRecord, PaymentError>,
) -> Result<CreateOutcome, PaymentError> {
    let fresh = match attempted {
        Ok(rec) => return Ok(CreateOutcome::Created(rec)),
        Err(PaymentError::Superseded(fresh)) => fresh,
        Err(e) => return Err(e),
    };
    check_replay(
        true,
        fresh.attempt_until,
        fresh.status == PaymentStatus::Failed,
        (&fresh.error_code, &fresh.error_message),
    )?;
    if fresh.action.is_some() || fresh.status.is_final() {
        return Ok(CreateOutcome::Replayed(answer(*fresh)));
    }
    // Neither answered nor in flight: the shop's retry takes it over at its bound account.
    Err(PaymentError::InProgress)
}
