package controllers

import (
	"context"
	"fmt"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// A shard is rebuilt from what changed since its last rebuild. Deciding
// what a shard publishes of an account reads its Secret, its labels and its
// rivals for the apiUser; doing that for every account of the shard on
// every rebuild cost O(accounts) per change: during a bulk creation of
// 10,000 accounts, rebuilds every 2 s of shards growing to 625 accounts
// each were a fifth of the operator's CPU and its largest allocator.
//
// Every input of an account's record is announced by a watch event that
// the publisher maps to the account (pendingChanges), after the cache it
// reads shows the change: the account itself (its spec, its Ready
// condition, its deletion), its labels, its credentials Secret, and its
// rivals for the apiUser, which are in the same shard and are decided
// again with it. What no account's event announces makes the next rebuild
// a full one: the relay's spec (its generation), the end of a previous
// key's grace period, a failed rebuild, and the first rebuild of a shard.
// A change of a namespace's labels (which a relay's namespace selector
// reads) marks every account of the namespace.

// shardBuild is what the last rebuild of one shard decided.
type shardBuild struct {
	relayUID        types.UID
	relayGeneration int64
	// accounts holds every account of the shard, published or not, so
	// that a change of one finds its rivals' apiUser.
	accounts map[types.NamespacedName]accountRecord
}

// shardBuilds are the shards' last rebuilds, by shard Secret.
type shardBuilds struct {
	mu sync.Mutex
	m  map[types.NamespacedName]*shardBuild
}

func (b *shardBuilds) get(shard types.NamespacedName) *shardBuild {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.m[shard]
}

// set records build as shard's last rebuild; nil forgets it, so that the
// next rebuild is a full one.
func (b *shardBuilds) set(shard types.NamespacedName, build *shardBuild) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = map[types.NamespacedName]*shardBuild{}
	}
	if build == nil {
		delete(b.m, shard)
		return
	}
	b.m[shard] = build
}

// nextExpiry is the earliest end of a previous key's grace period among
// the accounts, zero for none.
func (b *shardBuild) nextExpiry() time.Time {
	var next time.Time
	for _, rec := range b.accounts {
		if !rec.expiry.IsZero() && (next.IsZero() || rec.expiry.Before(next)) {
			next = rec.expiry
		}
	}
	return next
}

// entries are the published accounts.
func (b *shardBuild) entries() []shardEntry {
	out := make([]shardEntry, 0, len(b.accounts))
	for _, rec := range b.accounts {
		if rec.entry != nil {
			out = append(out, *rec.entry)
		}
	}
	return out
}

// rebuild decides what one of the relay's shards publishes now, from the
// accounts changed since its last rebuild when it can (changed), from all
// of them otherwise, and records the result for the next rebuild.
func (p *CredentialsPublisher) rebuild(ctx context.Context, relay *v1.SmtpRelay, shard int,
	key types.NamespacedName, changed map[types.NamespacedName]struct{}) (*shardBuild, error) {
	now := p.Now()
	last := p.builds.get(key)
	var build *shardBuild
	var err error
	if last == nil || last.relayUID != relay.UID || last.relayGeneration != relay.Generation ||
		(!last.nextExpiry().IsZero() && !now.Before(last.nextExpiry())) {
		build, err = p.fullBuild(ctx, relay, shard, now)
	} else {
		build, err = p.update(ctx, relay, shard, now, last, changed)
	}
	if err != nil {
		p.builds.set(key, nil)
		return nil, err
	}
	p.builds.set(key, build)
	return build, nil
}

// fullBuild decides every account of the shard.
func (p *CredentialsPublisher) fullBuild(ctx context.Context, relay *v1.SmtpRelay, shard int, now time.Time) (*shardBuild, error) {
	var list v1.SmtpAccountList
	if err := p.Client.List(ctx, &list, client.MatchingFields{indexAccountShard: shardKey(relay.Namespace, relay.Name, shard)},
		client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list accounts of relay %s, shard %d: %w", relay.Name, shard, err)
	}
	build := &shardBuild{relayUID: relay.UID, relayGeneration: relay.Generation,
		accounts: make(map[types.NamespacedName]accountRecord, len(list.Items))}
	var published map[string]wire.Account
	for i := range list.Items {
		acc := &list.Items[i]
		rec, err := p.record(ctx, relay, acc, shard, now, &published)
		if err != nil {
			return nil, err
		}
		build.accounts[client.ObjectKeyFromObject(acc)] = rec
	}
	return build, nil
}

// update decides again the changed accounts and their rivals for the
// apiUser, and keeps what last decided of the others.
func (p *CredentialsPublisher) update(ctx context.Context, relay *v1.SmtpRelay, shard int, now time.Time,
	last *shardBuild, changed map[types.NamespacedName]struct{}) (*shardBuild, error) {
	// last is changed in place: a failed rebuild forgets it (rebuild).
	build := last
	current := map[types.NamespacedName]*v1.SmtpAccount{}
	apiUsers := map[string]bool{}
	for key := range changed {
		if rec, ok := last.accounts[key]; ok {
			apiUsers[rec.apiUser] = true // it may have held the apiUser
		}
		acc := &v1.SmtpAccount{}
		err := p.Client.Get(ctx, key, acc)
		if apierrors.IsNotFound(err) {
			delete(build.accounts, key)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("get account %s: %w", key, err)
		}
		// It may have moved to another relay or shard since it was marked.
		if accountRelay(acc) != client.ObjectKeyFromObject(relay) || wire.ShardOf(render.APIUser(acc)) != shard {
			delete(build.accounts, key)
			continue
		}
		current[key] = acc
		apiUsers[render.APIUser(acc)] = true
	}
	if err := p.addRivals(ctx, relay, apiUsers, current); err != nil {
		return nil, err
	}
	var published map[string]wire.Account
	for key, acc := range current {
		rec, err := p.record(ctx, relay, acc, shard, now, &published)
		if err != nil {
			return nil, err
		}
		build.accounts[key] = rec
	}
	return build, nil
}

// addRivals adds to accounts every account of the relay that claims one of
// apiUsers: which of them holds it may have changed.
func (p *CredentialsPublisher) addRivals(ctx context.Context, relay *v1.SmtpRelay, apiUsers map[string]bool, accounts map[types.NamespacedName]*v1.SmtpAccount) error {
	for apiUser := range apiUsers {
		var list v1.SmtpAccountList
		if err := p.Client.List(ctx, &list, client.MatchingFields{indexAccountClaim: claimKey(relay.Namespace, relay.Name, apiUser)},
			client.UnsafeDisableDeepCopy); err != nil {
			return fmt.Errorf("list accounts claiming %q on relay %s/%s: %w", apiUser, relay.Namespace, relay.Name, err)
		}
		for i := range list.Items {
			key := client.ObjectKeyFromObject(&list.Items[i])
			if _, ok := accounts[key]; !ok {
				accounts[key] = &list.Items[i]
			}
		}
	}
	return nil
}
