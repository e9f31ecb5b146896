package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// CredentialsPublisher publishes, for each SmtpRelay, the accounts that may
// use it — api_user, key digests, labels, budget, sender domains — as the
// shard Secrets its pods watch in their own namespace (README, "The operator"). Relay
// pods thus never read tenants' Secrets, never see a key, and get a change
// as soon as the operator writes it.
//
// An account is published while its Ready condition is True for its current
// generation; a suspended, conflicting or refused account is not, which is
// how suspension and deletion reach the relays.
//
// Each reconcile request names one shard Secret, and a change rebuilds only
// the shard of the account it concerns. Rebuilding every shard on every
// change costs O(all accounts) per change: at 10,000 accounts that made a
// single change wait hundreds of milliseconds behind the rebuild already
// running, and held tens of megabytes in flight.
type CredentialsPublisher struct {
	Client client.Client
	// Recorder tells an account's owner it was left out of a full shard.
	Recorder events.EventRecorder
	// MaxLabels is the per-account label cap (default MaxLabelsPerAccount).
	MaxLabels int
	// Secrets reads the operator's own Secrets, with their data, from a
	// cache that holds nothing else (default: a cache of its own).
	Secrets *OwnedSecrets
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// MinInterval is the least time between two writes of one shard while
	// several of its accounts change (default DefaultPublishInterval).
	MinInterval time.Duration
	// DomainKeyNamespace is where the domain controller keeps the
	// SmtpDomains' keys; empty: no domain is verified.
	DomainKeyNamespace string

	// written is when each shard was last written.
	written   map[types.NamespacedName]time.Time
	writtenMu sync.Mutex
	// changed is which accounts of each shard changed since its last
	// rebuild.
	changed pendingChanges
	// builds are the shards' last rebuilds, which the next one starts
	// from (credentials_build.go).
	builds shardBuilds

	// digests remembers salted digests: each costs a fraction of a
	// millisecond, and a shard rebuild would otherwise pay it for every
	// account of the shard.
	digests digestCache
}

// digestCache maps a key's plain SHA-256 and a salt to its salted digest.
// It holds no key, and is emptied when it reaches maxCachedDigests.
type digestCache struct {
	mu sync.Mutex
	m  map[string]string
}

const maxCachedDigests = 1 << 17

func (c *digestCache) get(key string, salt []byte) string {
	id := wire.Digest(key) + string(salt)
	c.mu.Lock()
	d, ok := c.m[id]
	c.mu.Unlock()
	if ok {
		return d
	}
	d = wire.SaltedDigest(key, salt)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCachedDigests {
		c.m = map[string]string{}
	}
	c.m[id] = d
	return d
}

// +kubebuilder:rbac:groups=mailfleet.io,resources=smtprelays;smtpaccounts;smtplabels,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update;patch

// indexAccountShard: "<relay namespace>/<relay name>/<shard>", the shard
// Secret that publishes the account.
const indexAccountShard = "mailfleet.io/account-shard"

func shardKey(relayNamespace, relayName string, shard int) string {
	return relayKey(relayNamespace, relayName) + "/" + strconv.Itoa(shard)
}

// SetupWithManager registers the publisher. It needs the label indexes,
// which AccountReconciler.SetupWithManager registers.
func (p *CredentialsPublisher) SetupWithManager(mgr ctrl.Manager) error {
	if p.Client == nil {
		p.Client = mgr.GetClient()
	}
	if p.Now == nil {
		p.Now = time.Now
	}
	if p.Recorder == nil {
		p.Recorder = mgr.GetEventRecorder(FieldManager)
	}
	if p.Secrets == nil {
		var err error
		if p.Secrets, err = NewOwnedSecrets(mgr); err != nil {
			return err
		}
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("credentials").
		Watches(&v1.SmtpRelay{}, handler.EnqueueRequestsFromMapFunc(allShards),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&v1.SmtpAccount{}, handler.EnqueueRequestsFromMapFunc(p.shardOfAccount)).
		Watches(&v1.SmtpLabel{}, handler.EnqueueRequestsFromMapFunc(p.shardOfLabel)).
		Watches(&v1.SmtpSuppression{}, handler.EnqueueRequestsFromMapFunc(p.shardOfSuppression)).
		WatchesRawSource(source.Kind(p.Secrets.Cache, &corev1.Secret{}, handler.TypedEnqueueRequestsFromMapFunc(p.shardOfSecret))).
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(p.shardsOfNamespace), builder.WithPredicates(namespaceLabelsChanged)).
		Complete(p)
}

// DefaultPublishInterval is the least time between two writes of one
// shard while several of its accounts change. A change of one account
// (someone creating, labelling, suspending it, one step after another) is
// published at once, however recently its shard was written. Changes of
// several accounts that come sooner than this after a write are published
// together when it has passed: a bulk creation writes each shard (which
// every relay pod then reads whole) at most every 2 s, not once per
// account, and each change still reaches the relays in about the 2 s
// target.
const DefaultPublishInterval = 2 * time.Second

// Reconcile rewrites one shard Secret, named by the request, when its
// content changed; at most once per MinInterval while several of its
// accounts change. The requests of one shard are one key of the work
// queue, so the changes that come while a shard waits collapse into one
// rebuild.
func (p *CredentialsPublisher) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	relayName, shard, ok := wire.ParseShardSecretName(req.Name)
	if !ok {
		return ctrl.Result{}, nil // not a request this controller makes
	}
	if wait := p.holdOff(req.NamespacedName); wait > 0 {
		return ctrl.Result{RequeueAfter: wait}, nil
	}
	var relay v1.SmtpRelay
	if err := p.Client.Get(ctx, types.NamespacedName{Namespace: req.Namespace, Name: relayName}, &relay); err != nil {
		if apierrors.IsNotFound(err) {
			// A deleted relay's shards go with it: they are owned by
			// it. What was kept to rebuild them goes too.
			p.changed.take(req.NamespacedName)
			p.builds.set(req.NamespacedName, nil)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	// What changes from here on is for the next rebuild.
	changed := p.changed.take(req.NamespacedName)
	build, err := p.rebuild(ctx, &relay, shard, req.NamespacedName, changed)
	if err != nil {
		return ctrl.Result{}, err
	}
	nextExpiry := build.nextExpiry()
	data, accounts, leftOut, err := fitShard(build.entries(), maxShardBytes)
	if err != nil {
		return ctrl.Result{}, err
	}
	for _, e := range leftOut {
		// Only Events say so: the account's Ready condition is the
		// account controller's, which cannot see the shard fill.
		log.FromContext(ctx).Error(nil, "credentials shard full; account left out", "account", client.ObjectKeyFromObject(e.object), "shard", shard)
		p.Recorder.Eventf(e.object, nil, corev1.EventTypeWarning, "ShardFull", "Publish",
			"credentials shard %d of SmtpRelay %s/%s is full (%d KiB); the newest accounts in it are not published: make accounts smaller (labels, sender domains) or move some to another relay",
			shard, relay.Namespace, relay.Name, maxShardBytes>>10)
	}
	written, err := p.writeShard(ctx, &relay, shard, data, accounts)
	if err != nil {
		return ctrl.Result{}, err
	}
	if written {
		p.wrote(req.NamespacedName)
		log.FromContext(ctx).Info("credentials published", "shard", shard, "accounts", accounts)
	}
	if nextExpiry.IsZero() {
		return ctrl.Result{}, nil
	}
	// A previous key's grace period ends: publish without its digest.
	return ctrl.Result{RequeueAfter: nextExpiry.Sub(p.Now()) + time.Second}, nil
}

// holdOff is how long the shard must wait before it is written again: none
// unless several of its accounts changed since its last rebuild.
func (p *CredentialsPublisher) holdOff(shard types.NamespacedName) time.Duration {
	if p.changed.count(shard) < 2 {
		return 0
	}
	interval := p.MinInterval
	if interval == 0 {
		interval = DefaultPublishInterval
	}
	p.writtenMu.Lock()
	last, ok := p.written[shard]
	p.writtenMu.Unlock()
	if !ok {
		return 0
	}
	return last.Add(interval).Sub(p.Now())
}

// wrote records that the shard was written now.
func (p *CredentialsPublisher) wrote(shard types.NamespacedName) {
	p.writtenMu.Lock()
	defer p.writtenMu.Unlock()
	if p.written == nil {
		p.written = map[types.NamespacedName]time.Time{}
	}
	p.written[shard] = p.Now()
}

// maxShardBytes keeps a shard, with its Secret's metadata, under the API
// server's 1 MiB object limit. 10,000 accounts of a typical size fill a
// sixteenth of it per shard (TestFitShard).
const maxShardBytes = 900 << 10

// shardEntry is an account as a shard publishes it, beside the SmtpAccount
// it comes from, whose age decides who is left out of a full shard.
type shardEntry struct {
	account wire.Account
	object  *v1.SmtpAccount
}

// fitShard encodes the shard of the accounts of entries, by api_user, that
// fit in limit bytes, and returns how many it holds and the entries left
// out: the newest, so that accounts already sending keep sending when
// another grows the shard. The shard is encoded once: at 10,000 accounts
// encoding and validating it again to write it was a tenth of a rebuild.
func fitShard(entries []shardEntry, limit int) (data []byte, accounts int, leftOut []shardEntry, err error) {
	all := make([]wire.Account, 0, len(entries))
	for _, e := range entries {
		all = append(all, e.account)
	}
	byUser := func(a, b wire.Account) int { return strings.Compare(a.APIUser, b.APIUser) }
	slices.SortFunc(all, byUser)
	if data, err := wire.MarshalShard(all); err == nil && len(data) <= limit {
		return data, len(all), nil, nil
	}
	byAge := slices.Clone(entries)
	slices.SortFunc(byAge, func(a, b shardEntry) int {
		if createdBefore(a.object, b.object) {
			return -1
		}
		return 1
	})
	size := len(`{"accounts":[]}`)
	kept := all[:0]
	for _, e := range byAge {
		entry, err := json.Marshal(e.account)
		if err != nil || size+len(entry)+1 > limit {
			leftOut = append(leftOut, e)
			continue
		}
		size += len(entry) + 1
		kept = append(kept, e.account)
	}
	slices.SortFunc(kept, byUser)
	data, err = wire.MarshalShard(kept)
	return data, len(kept), leftOut, err
}

// accountRecord is what a shard publishes of one account, as its last
// rebuild decided: entry is nil when the account is not published.
type accountRecord struct {
	apiUser string
	entry   *shardEntry
	// expiry is when a previous key's digest in entry must be withdrawn;
	// zero when there is none.
	expiry time.Time
}

// record decides what the relay's shard publishes of acc. published is the
// shard as the cache has it, read once per rebuild when an account's
// Secret is missing.
func (p *CredentialsPublisher) record(ctx context.Context, relay *v1.SmtpRelay, acc *v1.SmtpAccount, shard int,
	now time.Time, published *map[string]wire.Account) (accountRecord, error) {
	apiUser := render.APIUser(acc)
	rec := accountRecord{apiUser: apiUser}
	entitled, err := p.entitled(ctx, relay, acc, apiUser, shard)
	if err != nil || !entitled {
		return rec, err
	}
	var secret corev1.Secret
	err = p.Secrets.Get(ctx, types.NamespacedName{Namespace: acc.Namespace, Name: render.CredentialsSecretName(acc)}, &secret)
	if apierrors.IsNotFound(err) {
		// Deleted under a published account: keep what is published
		// until the account controller writes the Secret again, with
		// the lost key's digest for the grace period (graceForLostKey
		// reads it from this shard).
		if *published == nil {
			*published = p.publishedAccounts(ctx, relay, shard)
		}
		if old, ok := (*published)[apiUser]; ok {
			rec.entry = entryOf(old, acc)
		}
		return rec, nil
	}
	if err != nil {
		return rec, fmt.Errorf("read credentials of account %s/%s: %w", acc.Namespace, acc.Name, err)
	}
	// A Secret of that name that this account does not control (another
	// account's, or an unrelated one) does not hold this account's key.
	if !accountHolds(&secret, acc) {
		return rec, nil
	}
	salt := render.DigestSalt(client.ObjectKeyFromObject(relay), apiUser)
	digests := accountKeyDigests(&secret, now, func(key string) string { return p.digests.get(key, salt) })
	if len(digests) == 0 {
		return rec, nil
	}
	labels, err := p.readyLabels(ctx, acc)
	if err != nil {
		return rec, err
	}
	entry := render.ShardEntry(acc, relay, digests, labels)
	entry.Webhooks = accountWebhooks(acc, render.WebhookSecretsFromSecret(&secret))
	verified, err := verifiedDomains(ctx, p.Client, p.Secrets, p.DomainKeyNamespace, acc.Namespace)
	if err != nil {
		return rec, err
	}
	applyDomains(&entry, acc, relay, verified)
	suppressed, _, nextExpiry, err := accountSuppressions(ctx, p.Client, acc, now)
	if err != nil {
		return rec, err
	}
	entry.Suppressions = suppressed
	// One account the relay would refuse must not stop every other
	// account of its shard from being published; the account
	// controller reports it as InvalidSpec.
	if err := wire.CheckAccount(entry); err != nil {
		log.FromContext(ctx).Error(err, "account left out of its credentials shard", "account", acc.Namespace+"/"+acc.Name)
		return rec, nil
	}
	rec.entry = entryOf(entry, acc)
	if st := render.KeyStateFromSecret(&secret); st.PreviousDigest != "" && now.Before(st.PreviousExpiry) {
		rec.expiry = st.PreviousExpiry
	}
	// An SmtpSuppression's expiry rebuilds the shard, as a key's does.
	if !nextExpiry.IsZero() && (rec.expiry.IsZero() || nextExpiry.Before(rec.expiry)) {
		rec.expiry = nextExpiry
	}
	return rec, nil
}

// entryOf is a shard's entry for acc. It keeps of the account only what
// fitShard and its Events read (name, namespace, UID, creation time), not
// the cache's copy: a shard's accounts are kept between rebuilds.
func entryOf(a wire.Account, acc *v1.SmtpAccount) *shardEntry {
	return &shardEntry{account: a, object: &v1.SmtpAccount{ObjectMeta: metav1.ObjectMeta{
		Namespace: acc.Namespace, Name: acc.Name, UID: acc.UID, ResourceVersion: acc.ResourceVersion,
		CreationTimestamp: acc.CreationTimestamp,
	}}}
}

// publishedAccounts is the content of one of the relay's shards as the
// cache has it, by api_user; empty when it is missing or unreadable.
func (p *CredentialsPublisher) publishedAccounts(ctx context.Context, relay *v1.SmtpRelay, shard int) map[string]wire.Account {
	var s corev1.Secret
	if err := p.Secrets.Get(ctx, types.NamespacedName{Namespace: relay.Namespace, Name: wire.ShardSecretName(relay.Name, shard)}, &s); err != nil {
		return map[string]wire.Account{}
	}
	return shardAccounts(&s)
}

// shardAccounts is what a shard Secret publishes, by api_user; empty when
// it holds nothing the relay could read.
func shardAccounts(s *corev1.Secret) map[string]wire.Account {
	out := map[string]wire.Account{}
	accounts, err := wire.ParseShard(s.Data[wire.ShardDataKey])
	if err != nil {
		return out
	}
	for _, a := range accounts {
		out[a.APIUser] = a
	}
	return out
}

func (p *CredentialsPublisher) readyLabels(ctx context.Context, acc *v1.SmtpAccount) ([]wire.Label, error) {
	all, err := accountLabels(ctx, p.Client, acc.Namespace, acc.Name)
	if err != nil {
		return nil, err
	}
	var out []wire.Label
	for _, l := range servedLabels(all, p.MaxLabels) {
		if !l.Spec.Suspended && readySome(l.Status.Conditions) {
			out = append(out, wire.Label{ID: l.Spec.LabelID})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// entitled decides from the account's spec and the operator's own checks
// whether it is published: a tenant may write its account's status (any
// role with */status can), so status is never trusted for that. A Ready
// condition is required too, but only ever withholds. It may speak of an
// earlier generation: an edit must not unpublish the account until the
// account controller has looked at it (that made every edit a moment of
// 535s). Until then the spec is published as edited, and the key is the
// one the account controller last wrote, since every check of the spec
// that could unpublish it is made here again.
func (p *CredentialsPublisher) entitled(ctx context.Context, relay *v1.SmtpRelay, acc *v1.SmtpAccount, apiUser string, shard int) (bool, error) {
	if acc.Spec.Suspended || acc.DeletionTimestamp != nil || wire.ShardOf(apiUser) != shard ||
		!readySome(acc.Status.Conditions) {
		return false, nil
	}
	out, err := claim(ctx, p.Client, relay, acc)
	return err == nil && out == nil, err
}

// readySome reports a Ready=True condition, of whichever generation.
func readySome(conds []metav1.Condition) bool {
	return meta.IsStatusConditionTrue(conds, v1.ConditionReady)
}

// shardRequest is the request that rebuilds one shard of relay.
func shardRequest(relay types.NamespacedName, shard int) reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: relay.Namespace, Name: wire.ShardSecretName(relay.Name, shard)}}
}

// writeShard applies one shard, data publishing that many accounts, when
// its content differs from what is there.
func (p *CredentialsPublisher) writeShard(ctx context.Context, relay *v1.SmtpRelay, i int, data []byte, accounts int) (bool, error) {
	name := wire.ShardSecretName(relay.Name, i)
	count := strconv.Itoa(accounts)
	var existing corev1.Secret
	err := p.Secrets.Get(ctx, types.NamespacedName{Namespace: relay.Namespace, Name: name}, &existing)
	if err == nil && string(existing.Data[wire.ShardDataKey]) == string(data) &&
		existing.Annotations[render.AnnotationShardAccounts] == count {
		return false, nil
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return false, fmt.Errorf("read shard %s: %w", name, err)
	}
	shard := render.ShardSecret(relay, i, data, accounts)
	if err := writeSecret(ctx, p.Client, shard); err != nil {
		return false, fmt.Errorf("apply shard %s: %w", name, err)
	}
	return true, nil
}

// pendingChanges is, per shard, the accounts that changed since its last
// rebuild.
type pendingChanges struct {
	mu sync.Mutex
	m  map[types.NamespacedName]map[types.NamespacedName]struct{}
}

func (c *pendingChanges) add(shard, account types.NamespacedName) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[types.NamespacedName]map[types.NamespacedName]struct{}{}
	}
	if c.m[shard] == nil {
		c.m[shard] = map[types.NamespacedName]struct{}{}
	}
	c.m[shard][account] = struct{}{}
}

func (c *pendingChanges) count(shard types.NamespacedName) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m[shard])
}

// take returns the accounts of shard that changed and forgets them.
func (c *pendingChanges) take(shard types.NamespacedName) map[types.NamespacedName]struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := c.m[shard]
	delete(c.m, shard)
	return changed
}

// allShards rebuilds every shard of a relay whose spec changed (its default
// budget is in every shard), or that was created.
func allShards(_ context.Context, o client.Object) []reconcile.Request {
	relay := client.ObjectKeyFromObject(o)
	reqs := make([]reconcile.Request, wire.ShardCount)
	for i := range reqs {
		reqs[i] = shardRequest(relay, i)
	}
	return reqs
}

// shardOfAccount rebuilds the shard that publishes the account, and
// records that the account changed.
func (p *CredentialsPublisher) shardOfAccount(_ context.Context, o client.Object) []reconcile.Request {
	acc := o.(*v1.SmtpAccount)
	req := shardRequest(accountRelay(acc), wire.ShardOf(render.APIUser(acc)))
	p.changed.add(req.NamespacedName, client.ObjectKeyFromObject(acc))
	return []reconcile.Request{req}
}

func (p *CredentialsPublisher) shardOfSuppression(ctx context.Context, o client.Object) []reconcile.Request {
	var acc v1.SmtpAccount
	key := types.NamespacedName{Namespace: o.GetNamespace(), Name: o.(*v1.SmtpSuppression).Spec.AccountRef}
	if err := p.Client.Get(ctx, key, &acc); err != nil {
		return nil
	}
	return p.shardOfAccount(ctx, &acc)
}

func (p *CredentialsPublisher) shardOfLabel(ctx context.Context, o client.Object) []reconcile.Request {
	var acc v1.SmtpAccount
	key := types.NamespacedName{Namespace: o.GetNamespace(), Name: o.(*v1.SmtpLabel).Spec.AccountRef}
	if err := p.Client.Get(ctx, key, &acc); err != nil {
		return nil
	}
	return p.shardOfAccount(ctx, &acc)
}

// shardsOfNamespace maps a namespace whose labels changed to the shards of
// its accounts: a relay's namespace selector decides which accounts it
// publishes, and a namespace that leaves the selector must take its
// accounts' keys off the relay without waiting for anything else to
// change (the account controller's Ready write is another controller's
// queue).
func (p *CredentialsPublisher) shardsOfNamespace(ctx context.Context, o client.Object) []reconcile.Request {
	var list v1.SmtpAccountList
	if err := p.Client.List(ctx, &list, client.InNamespace(o.GetName()), client.UnsafeDisableDeepCopy); err != nil {
		log.FromContext(ctx).Error(err, "list accounts to republish", "namespace", o.GetName())
		return nil
	}
	seen := map[reconcile.Request]bool{}
	var reqs []reconcile.Request
	for i := range list.Items {
		for _, req := range p.shardOfAccount(ctx, &list.Items[i]) {
			if !seen[req] {
				seen[req] = true
				reqs = append(reqs, req)
			}
		}
	}
	return reqs
}

// shardOfSecret maps a credentials Secret (a key issued or rotated) to its
// account's shard.
func (p *CredentialsPublisher) shardOfSecret(ctx context.Context, s *corev1.Secret) []reconcile.Request {
	// A domain's keys (verified, rotated, withdrawn) change what every
	// account of its namespace may send from and sign with.
	if ns, ok := s.Labels[render.LabelDomainNamespace]; ok && s.Namespace == p.DomainKeyNamespace {
		return p.shardsOfNamespace(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	}
	name, ok := s.Labels[render.LabelAccount]
	if !ok {
		return nil
	}
	var acc v1.SmtpAccount
	if err := p.Client.Get(ctx, types.NamespacedName{Namespace: s.Namespace, Name: name}, &acc); err != nil {
		return nil
	}
	return p.shardOfAccount(ctx, &acc)
}
