package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// floorResult is the floor: how long a plain client takes to make the
// creates and the writes the operator must make, with no operator, no
// watches and no reads, on the same machine in the same run. All-Ready
// cannot come sooner than this; issue 16 asks for it within 1.5 times.
type floorResult struct {
	done            time.Duration // from the first create to the last write
	createDuration  time.Duration // the creates alone, as they were interleaved with the writes
	writes          int64         // writes besides the creates
	shards          int
	requests        requestCounts // every request the API server counted
	controlPlaneCPU time.Duration // the API server's and etcd's
}

// runFloor measures the floor in an API server of its own (an operator
// started later must not find these objects). The creates are the scale
// phase's, from as many workers; as each object exists, one of as many
// more workers makes the writes the operator makes for it, rendered as the
// operator renders them:
//
//   - an account: its credentials Secret (server-side apply, with a new
//     key) and its status (a merge patch, Ready);
//   - a label: its status (a merge patch, Ready);
//
// and once all are written, the relay's 16 shard Secrets with every
// account. That is the least the operator can write for these objects to
// be Ready and published; it also reads, watches and may write a shard
// more than once, which the ratio to this floor measures.
func runFloor(ctx context.Context, o options) (floorResult, error) {
	var res floorResult
	env, err := startCluster(ctx, o, false)
	if env != nil {
		defer func() {
			if stopErr := env.stop(); stopErr != nil && err == nil {
				err = stopErr
			}
		}()
	}
	if err != nil {
		return res, err
	}
	if err := createRelay(ctx, env.client); err != nil {
		return res, err
	}
	relay := &v1.SmtpRelay{}
	if err := env.client.Get(ctx, client.ObjectKey{Namespace: relayNamespace, Name: relayName}, relay); err != nil {
		return res, fmt.Errorf("read relay: %w", err)
	}
	for i := range o.namespaces {
		if err := createIgnoringExists(ctx, env.client, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: tenantNamespace(i)}}); err != nil {
			return res, err
		}
	}
	before, err := apiRequests(ctx, env)
	if err != nil {
		return res, err
	}
	fmt.Fprintf(os.Stderr, "floor: creating %d SmtpAccounts and %d SmtpLabels and making the operator's writes, with no operator …\n",
		o.accounts, o.accounts*o.labelsPerAccount)

	w := &floorWriter{c: env.client, relay: relay, labels: o.labelsPerAccount, keys: map[string]string{}}
	jobs := make(chan client.Object, 4*o.workers)
	writers, wctx := errgroup.WithContext(ctx)
	for range o.workers {
		writers.Go(func() error {
			for obj := range jobs {
				if err := w.write(wctx, obj); err != nil {
					return err
				}
			}
			return nil
		})
	}
	cpuBefore := controlPlaneCPU()
	start := time.Now()
	var created atomic.Int64
	err = createAll(wctx, env.client, o, &created, func(obj client.Object) error {
		select {
		case jobs <- obj:
			return nil
		case <-wctx.Done():
			return wctx.Err()
		}
	})
	res.createDuration = time.Since(start)
	close(jobs)
	if werr := writers.Wait(); werr != nil {
		err = werr // the cause of a create's cancellation, if any
	}
	if err != nil {
		return res, err
	}
	if res.shards, err = w.writeShards(ctx); err != nil {
		return res, err
	}
	res.done = time.Since(start)
	res.controlPlaneCPU = controlPlaneCPU() - cpuBefore
	res.writes = w.writes.Load()
	after, err := apiRequests(ctx, env)
	if err != nil {
		return res, err
	}
	res.requests = after.minus(before)
	fmt.Fprintf(os.Stderr, "floor: %d objects created after %v, and %d writes done after %v\n",
		created.Load(), res.createDuration.Round(time.Millisecond), res.writes, res.done.Round(time.Millisecond))
	return res, nil
}

// floorWriter makes the operator's writes for each object.
type floorWriter struct {
	c      client.Client
	relay  *v1.SmtpRelay
	labels int // per account, each named in its credentials Secret
	writes atomic.Int64

	mu       sync.Mutex
	keys     map[string]string // the key issued to each account, by namespace/name
	accounts []*v1.SmtpAccount
}

func (w *floorWriter) write(ctx context.Context, obj client.Object) error {
	if obj.GetUID() == "" {
		// Created by an attempt whose answer was lost: read it back.
		if err := w.c.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
			return fmt.Errorf("read %s: %w", obj.GetName(), err)
		}
	}
	switch obj := obj.(type) {
	case *v1.SmtpAccount:
		return w.account(ctx, obj)
	case *v1.SmtpLabel:
		return w.label(ctx, obj)
	}
	return nil
}

// account applies the account's credentials Secret and writes its status.
func (w *floorWriter) account(ctx context.Context, acc *v1.SmtpAccount) error {
	key, err := wire.NewKey()
	if err != nil {
		return err
	}
	now := time.Now().UTC().Truncate(time.Second)
	labelIDs := make([]string, 0, w.labels)
	for j := range w.labels {
		labelIDs = append(labelIDs, "l"+strconv.Itoa(j))
	}
	secret := render.CredentialsSecret(render.CredentialsInput{Account: acc, Relay: w.relay, LabelIDs: labelIDs,
		Key: render.KeyState{Key: key, IssuedAt: now}})
	if err := apply(ctx, w.c, secret); err != nil {
		return err
	}
	orig := acc.DeepCopy()
	acc.Status.ObservedGeneration = acc.Generation
	acc.Status.APIUser = render.APIUser(acc)
	acc.Status.SecretName = secret.Name
	acc.Status.KeyRotatedAt = &metav1.Time{Time: now}
	meta.SetStatusCondition(&acc.Status.Conditions, metav1.Condition{Type: v1.ConditionReady, Status: metav1.ConditionTrue,
		ObservedGeneration: acc.Generation, Reason: v1.ReasonReady, Message: fmt.Sprintf("credentials are in Secret %q", secret.Name)})
	if err := w.c.Status().Patch(ctx, acc, client.MergeFrom(orig)); err != nil {
		return fmt.Errorf("status of account %s: %w", acc.Name, err)
	}
	w.writes.Add(2)
	w.mu.Lock()
	w.keys[acc.Namespace+"/"+acc.Name] = key
	w.accounts = append(w.accounts, acc)
	w.mu.Unlock()
	return nil
}

// label writes the label's status.
func (w *floorWriter) label(ctx context.Context, l *v1.SmtpLabel) error {
	orig := l.DeepCopy()
	username := wire.Username(l.Spec.AccountRef, l.Spec.LabelID)
	l.Status.ObservedGeneration = l.Generation
	l.Status.Username = username
	meta.SetStatusCondition(&l.Status.Conditions, metav1.Condition{Type: v1.ConditionReady, Status: metav1.ConditionTrue,
		ObservedGeneration: l.Generation, Reason: v1.ReasonReady, Message: "clients log in as " + username})
	if err := w.c.Status().Patch(ctx, l, client.MergeFrom(orig)); err != nil {
		return fmt.Errorf("status of label %s: %w", l.Name, err)
	}
	w.writes.Add(1)
	return nil
}

// writeShards applies the relay's shards, each with its accounts' salted
// digests and labels, as the publisher renders them.
func (w *floorWriter) writeShards(ctx context.Context) (int, error) {
	shards := make([][]wire.Account, wire.ShardCount)
	relayKey := client.ObjectKeyFromObject(w.relay)
	for _, acc := range w.accounts {
		apiUser := render.APIUser(acc)
		var labels []wire.Label
		for j := range w.labels {
			labels = append(labels, wire.Label{ID: "l" + strconv.Itoa(j)})
		}
		digest := wire.SaltedDigest(w.keys[acc.Namespace+"/"+acc.Name], render.DigestSalt(relayKey, apiUser))
		n := wire.ShardOf(apiUser)
		shards[n] = append(shards[n], render.ShardEntry(acc, w.relay, []string{digest}, labels))
	}
	for i, accounts := range shards {
		slices.SortFunc(accounts, func(a, b wire.Account) int { return strings.Compare(a.APIUser, b.APIUser) })
		data, err := wire.MarshalShard(accounts)
		if err != nil {
			return i, err
		}
		if err := apply(ctx, w.c, render.ShardSecret(w.relay, i, data, len(accounts))); err != nil {
			return i, err
		}
		w.writes.Add(1)
	}
	return len(shards), nil
}

// apply is the operator's write of an object it owns: server-side apply as
// its field manager, taking over fields.
func apply(ctx context.Context, c client.Client, obj client.Object) error {
	gvk, err := apiutil.GVKForObject(obj, c.Scheme())
	if err != nil {
		return err
	}
	content, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return err
	}
	delete(content, "status")
	u := &unstructured.Unstructured{Object: content}
	u.SetGroupVersionKind(gvk)
	if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(controllers.FieldManager), client.ForceOwnership); err != nil {
		return fmt.Errorf("apply %s %s/%s: %w", gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
	}
	return nil
}
