package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
	"github.com/mailfleet/mailfleet/relay/credentials"
	"github.com/mailfleet/mailfleet/relay/credentials/kubesource"
)

const (
	// propagationTimeout fails a single measurement: far beyond the 2 s
	// target, so a timeout means something is broken, not slow.
	propagationTimeout = 30 * time.Second
	// authPollInterval is how often the relay-side check is repeated; the
	// check is a map lookup and one SHA-256, so polling this often is cheap
	// and the figures are exact to about this much.
	authPollInterval = 2 * time.Millisecond
	// keyPollInterval is how often the probe account's Secret is read
	// while waiting for its key.
	keyPollInterval = 10 * time.Millisecond
	probeLabelID    = "probe"
)

// propagation holds one measurement series per kind of change.
type propagation struct {
	keyIssued, add, label, suspend, resume, remove []time.Duration
}

// runPropagation runs a relay's credentials source (kubesource.Secrets,
// what a relay pod runs) against envtest, waits until it holds every
// account, then times single changes at full scale:
// a new account, a new label, a suspension, its reversal and a deletion.
func runPropagation(ctx context.Context, c *cluster, o options, rep *report) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	src := kubesource.NewSecrets(c.clientset, relayNamespace, relayName, slog.New(slog.NewTextHandler(io.Discard, nil)))
	srcStart := time.Now()
	srcDone := make(chan error, 1)
	go func() { srcDone <- src.Run(ctx) }()
	defer func() {
		cancel()
		<-srcDone
	}()
	if err := waitFor(ctx, time.Minute, func() (bool, error) { return src.Synced(), nil }); err != nil {
		return fmt.Errorf("relay source initial sync: %w", err)
	}
	rep.relaySync = time.Since(srcStart)

	// The publisher may still be catching up when the last status turned
	// Ready: "usable at the relay" is the figure that counts for people.
	err := waitFor(ctx, 5*time.Minute, func() (bool, error) {
		return publishedEverything(src, o), c.operator.running()
	})
	if err != nil {
		return fmt.Errorf("waiting for every account and label at the relay: %w", err)
	}
	rep.allPublished = time.Since(rep.start)
	fmt.Fprintf(os.Stderr, "relay source holds all %d accounts and their labels, %v after the first create\n",
		o.accounts, rep.allPublished.Round(time.Millisecond))

	// The changes are to be timed at rest, not behind the storm's backlog
	// (the follow-up reconciles its 30,000 writes set off).
	settleStart := time.Now()
	if err := waitIdle(ctx, c.operator); err != nil {
		return err
	}
	rep.settle = time.Since(settleStart)
	fmt.Fprintf(os.Stderr, "operator idle after another %v\n", rep.settle.Round(time.Millisecond))

	verifier := credentials.NewVerifier(src)
	p := &rep.prop
	for i := range o.rounds {
		if err := probeRound(ctx, c, verifier, src, i, p); err != nil {
			return fmt.Errorf("round %d: %w", i+1, err)
		}
		fmt.Fprintf(os.Stderr, "round %2d: key %v  add %v  label %v  suspend %v  resume %v  delete %v\n", i+1,
			last(p.keyIssued), last(p.add), last(p.label), last(p.suspend), last(p.resume), last(p.remove))
	}
	return nil
}

// Idle is under idleCPU of CPU time per idleWindow, idleWindows in a row.
const (
	idleWindow  = time.Second
	idleCPU     = 50 * time.Millisecond
	idleWindows = 2
	idleTimeout = 2 * time.Minute
)

// waitIdle waits until the operator has stopped working, judged by its CPU
// time: its queues and metrics are not visible from outside.
func waitIdle(ctx context.Context, p *operatorProcess) error {
	deadline := time.Now().Add(idleTimeout)
	quiet := 0
	last, err := procCPU(p.pid())
	if err != nil {
		return nil // no /proc: do not wait
	}
	for quiet < idleWindows {
		if time.Now().After(deadline) {
			return fmt.Errorf("operator still busy after %v", idleTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(idleWindow):
		}
		now, err := procCPU(p.pid())
		if err != nil {
			return fmt.Errorf("operator CPU time: %w", err)
		}
		if now-last < idleCPU {
			quiet++
		} else {
			quiet = 0
		}
		last = now
	}
	return nil
}

// publishedEverything reports whether the source has every benchmark
// account with all its labels.
func publishedEverything(src *kubesource.Secrets, o options) bool {
	if src.Len() < o.accounts {
		return false
	}
	for i := range o.accounts {
		a, ok := src.Lookup(accountName(i))
		if !ok || len(a.Labels) != o.labelsPerAccount {
			return false
		}
	}
	return true
}

// probeRound creates one account and times each change until the relay
// source reflects it.
func probeRound(ctx context.Context, c *cluster, verifier *credentials.Verifier, src *kubesource.Secrets, i int, p *propagation) error {
	ns, name := tenantNamespace(0), fmt.Sprintf("probe-%02d", i)
	authenticates := func(user, key string) func() (bool, error) {
		return func() (bool, error) {
			_, err := verifier.Authenticate(user, key)
			return err == nil, nil
		}
	}
	refused := func(user, key string) func() (bool, error) {
		return func() (bool, error) {
			_, err := verifier.Authenticate(user, key)
			return err != nil, nil
		}
	}

	// A new account: the clock runs from the create call until the key its
	// application reads from the Secret works at the relay.
	start := time.Now()
	acc := &v1.SmtpAccount{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       v1.SmtpAccountSpec{RelayRef: v1.RelayReference{Name: relayName, Namespace: relayNamespace}},
	}
	if err := c.client.Create(ctx, acc); err != nil {
		return fmt.Errorf("create account %s: %w", name, err)
	}
	key, err := waitForKey(ctx, c, ns, name+"-smtp-credentials")
	if err != nil {
		return err
	}
	p.keyIssued = append(p.keyIssued, time.Since(start))
	if err := measure(ctx, start, &p.add, "new account", authenticates(name, key)); err != nil {
		return err
	}

	start = time.Now()
	label := &v1.SmtpLabel{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-" + probeLabelID, Namespace: ns},
		Spec:       v1.SmtpLabelSpec{AccountRef: name, LabelID: probeLabelID},
	}
	if err := c.client.Create(ctx, label); err != nil {
		return fmt.Errorf("create label of %s: %w", name, err)
	}
	if err := measure(ctx, start, &p.label, "new label", authenticates(wire.Username(name, probeLabelID), key)); err != nil {
		return err
	}

	for _, step := range []struct {
		suspended bool
		series    *[]time.Duration
		what      string
		done      func() (bool, error)
	}{
		{true, &p.suspend, "suspension", refused(name, key)},
		{false, &p.resume, "resumption", authenticates(name, key)},
	} {
		start = time.Now()
		patch := []byte(`{"spec":{"suspended":` + strconv.FormatBool(step.suspended) + `}}`)
		if err := c.client.Patch(ctx, acc, client.RawPatch(types.MergePatchType, patch)); err != nil {
			return fmt.Errorf("%s of %s: %w", step.what, name, err)
		}
		if err := measure(ctx, start, step.series, step.what, step.done); err != nil {
			return err
		}
	}

	start = time.Now()
	if err := c.client.Delete(ctx, acc); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return measure(ctx, start, &p.remove, "deletion", func() (bool, error) {
		_, ok := src.Lookup(name)
		return !ok, nil
	})
}

// measure waits until done and appends the time since start to series.
func measure(ctx context.Context, start time.Time, series *[]time.Duration, what string, done func() (bool, error)) error {
	if err := pollUntil(ctx, propagationTimeout, authPollInterval, done); err != nil {
		return fmt.Errorf("%s at the relay: %w", what, err)
	}
	*series = append(*series, time.Since(start))
	return nil
}

// waitForKey reads the account's credentials Secret until it holds a key.
func waitForKey(ctx context.Context, c *cluster, ns, name string) (string, error) {
	var key string
	err := pollUntil(ctx, propagationTimeout, keyPollInterval, func() (bool, error) {
		s, err := c.clientset.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("read Secret %s/%s: %w", ns, name, err)
		}
		key = string(s.Data[render.SecretKeyPassword])
		return key != "", nil
	})
	if err != nil {
		return "", fmt.Errorf("key in Secret %s/%s: %w", ns, name, err)
	}
	return key, nil
}

// waitFor polls check every 100 ms.
func waitFor(ctx context.Context, timeout time.Duration, check func() (bool, error)) error {
	return pollUntil(ctx, timeout, 100*time.Millisecond, check)
}

var errTimeout = errors.New("timed out")

// pollUntil calls check every interval until it returns true or an error,
// ctx ends or timeout passes.
func pollUntil(ctx context.Context, timeout, interval time.Duration, check func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := check()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %v", errTimeout, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

func last(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	return ds[len(ds)-1].Round(time.Millisecond)
}

// Compile-time check that the relay-side source is what a relay pod uses.
var _ credentials.Source = (*kubesource.Secrets)(nil)
