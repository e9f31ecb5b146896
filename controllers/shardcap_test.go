package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
)

// TestFitShard (issue 12.11): 10,000 accounts of a typical size fill each of
// the 16 shards to well under the API server's 1 MiB object limit, and when
// accounts outgrow a shard the newest are left out, the shard stays under
// the limit and the relay can read it.
func TestFitShard(t *testing.T) {
	digest := wire.SaltedDigest("a-key-of-thirty-two-characters!!", []byte("0123456789abcdef"))
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	entry := func(i int, domains int) shardEntry {
		a := wire.Account{APIUser: fmt.Sprintf("account-%05d", i), KeyDigests: []string{digest},
			Labels: []wire.Label{{ID: "1001"}, {ID: "1002"}}, AllowedSenderDomains: []string{"acme.example"}}
		for d := range domains {
			a.AllowedSenderDomains = append(a.AllowedSenderDomains, fmt.Sprintf("%s.d%03d.example", strings.Repeat("x", 60), d))
		}
		return shardEntry{account: a, object: &v1.SmtpAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: a.APIUser,
			CreationTimestamp: metav1.NewTime(base.Add(time.Duration(i) * time.Second))}}}
	}

	shards := make([][]shardEntry, wire.ShardCount)
	for i := range 10000 {
		e := entry(i, 0)
		s := wire.ShardOf(e.account.APIUser)
		shards[s] = append(shards[s], e)
	}
	largest := 0
	for s, entries := range shards {
		data, kept, leftOut, err := fitShard(entries, maxShardBytes)
		if err != nil {
			t.Fatal(err)
		}
		if len(leftOut) != 0 || kept != len(entries) {
			t.Fatalf("shard %d: %d of %d accounts left out", s, len(leftOut), len(entries))
		}
		largest = max(largest, len(data))
	}
	if largest > maxShardBytes/4 {
		t.Errorf("10,000 typical accounts: the largest shard has %d bytes, over a quarter of the cap", largest)
	}
	t.Logf("10,000 typical accounts: largest shard %d KiB of %d", largest>>10, maxShardBytes>>10)

	// Accounts with 100 long sender domains each: 10,000 of them would need
	// some 70 MiB; one shard keeps the oldest that fit.
	var big []shardEntry
	for i := range 2000 {
		big = append(big, entry(i, 100))
	}
	data, kept, leftOut, err := fitShard(big, maxShardBytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > maxShardBytes || kept+len(leftOut) != len(big) || kept == 0 {
		t.Fatalf("kept %d (%d bytes), left out %d", kept, len(data), len(leftOut))
	}
	if _, err := wire.ParseShard(data); err != nil {
		t.Fatalf("the relay refuses the capped shard: %v", err)
	}
	for _, e := range leftOut {
		if createdBefore(e.object, big[kept-1].object) {
			t.Fatalf("%s was left out while newer accounts were kept", e.object.Name)
		}
	}
	t.Logf("oversized accounts: %d of %d kept in %d KiB", kept, len(big), len(data)>>10)
}

// TestPublisherHoldsOffAShard: a shard written less than MinInterval ago
// waits for the rest of it while several of its accounts change, and not
// for one account changing again; other shards do not wait.
func TestPublisherHoldsOffAShard(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	p := &CredentialsPublisher{Now: func() time.Time { return now }, MinInterval: time.Second}
	relay := types.NamespacedName{Namespace: "platform", Name: "mx"}
	req, other := shardRequest(relay, 3), shardRequest(relay, 4)
	account := func(name string) types.NamespacedName { return types.NamespacedName{Namespace: "tenant", Name: name} }
	p.changed.add(req.NamespacedName, account("a"))
	p.changed.add(req.NamespacedName, account("b"))
	if d := p.holdOff(req.NamespacedName); d > 0 {
		t.Errorf("a shard never written waits %v", d)
	}
	p.wrote(req.NamespacedName)
	p.changed.take(req.NamespacedName)
	now = now.Add(400 * time.Millisecond)

	p.changed.add(req.NamespacedName, account("a"))
	p.changed.add(req.NamespacedName, account("a"))
	if d := p.holdOff(req.NamespacedName); d > 0 {
		t.Errorf("one account changed again: waits %v", d)
	}
	p.changed.add(req.NamespacedName, account("c"))
	// Reconcile returns before it reads anything (the publisher has no client here).
	res, err := p.Reconcile(context.Background(), req)
	if err != nil || res.RequeueAfter != 600*time.Millisecond {
		t.Errorf("two accounts changed, written 400 ms ago: %+v, %v; want to be asked again in 600 ms", res, err)
	}
	p.changed.add(other.NamespacedName, account("d"))
	p.changed.add(other.NamespacedName, account("e"))
	if d := p.holdOff(other.NamespacedName); d > 0 {
		t.Errorf("another shard waits %v", d)
	}
	now = now.Add(600 * time.Millisecond)
	if d := p.holdOff(req.NamespacedName); d > 0 {
		t.Errorf("written a second ago: waits %v more", d)
	}
}
