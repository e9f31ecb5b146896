package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
)

const (
	// relayNamespace and relayName are the platform relay every account uses.
	relayNamespace = "mailfleet-system"
	relayName      = "mx"
	// progressInterval is how often a progress line is printed.
	progressInterval = 10 * time.Second
)

// benchRequests counts the requests the benchmark itself sends (creates
// and readiness watches), by verb and resource as the API server counts them,
// to tell them from the operator's.
var benchRequests = &requestCounter{counts: requestCounts{}}

// requestCounter is a requestCounts many goroutines add to.
type requestCounter struct {
	mu     sync.Mutex
	counts requestCounts
}

func (c *requestCounter) add(key string) {
	c.mu.Lock()
	c.counts[key]++
	c.mu.Unlock()
}

// snapshot is a copy of the counts so far.
func (c *requestCounter) snapshot() requestCounts {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.counts)
}

// resourceOf is the API server's resource name for the kinds the benchmark
// creates.
func resourceOf(obj client.Object) string {
	switch obj.(type) {
	case *corev1.Namespace:
		return "namespaces"
	case *v1.SmtpRelay:
		return "smtprelays"
	case *v1.SmtpAccount:
		return "smtpaccounts"
	case *v1.SmtpLabel:
		return "smtplabels"
	}
	return fmt.Sprintf("%T", obj)
}

func tenantNamespace(i int) string { return fmt.Sprintf("tenant-%02d", i) }
func accountName(i int) string     { return fmt.Sprintf("acct-%05d", i) }

// runScale creates the relay, the tenants' namespaces, the accounts and
// their labels, and waits until every account and label is Ready.
func runScale(ctx context.Context, c *cluster, o options, rep *report) error {
	if err := createRelay(ctx, c.client); err != nil {
		return err
	}
	for i := range o.namespaces {
		if err := createIgnoringExists(ctx, c.client, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: tenantNamespace(i)}}); err != nil {
			return err
		}
	}
	wantLabels := o.accounts * o.labelsPerAccount
	fmt.Fprintf(os.Stderr, "creating %d SmtpAccounts and %d SmtpLabels in %d namespaces with %d workers …\n",
		o.accounts, wantLabels, o.namespaces, o.workers)

	before, err := apiRequests(ctx, c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil) // also ends the readiness watches
	var created atomic.Int64
	benchBefore := benchRequests.snapshot()
	cpuBefore := controlPlaneCPU()
	inside, err := c.watchOperator(ctx, o)
	if err != nil {
		return err
	}
	defer func() {
		rep.controlPlaneCPU = controlPlaneCPU() - cpuBefore
		inside.stop(context.WithoutCancel(ctx), rep)
		// Counted whatever the outcome: the mix may explain a slow run.
		if after, err := apiRequests(context.WithoutCancel(ctx), c); err == nil {
			rep.requests = after.minus(before)
			rep.benchRequests = benchRequests.snapshot().minus(benchBefore)
		}
		if evs, err := eventsByReason(context.WithoutCancel(ctx), c); err == nil {
			rep.events = evs
		}
	}()
	var accounts, labels *readiness
	if c.operator != nil {
		// Followed from before the first create, so none is missed.
		if accounts, err = watchReadiness(ctx, c, "smtpaccounts", o.accounts); err != nil {
			return err
		}
		if labels, err = watchReadiness(ctx, c, "smtplabels", wantLabels); err != nil {
			return err
		}
	}
	rep.start = time.Now()
	createDone := make(chan struct{})
	go func() {
		defer close(createDone)
		if err := createAll(ctx, c.client, o, &created, nil); err != nil {
			cancel(err)
			return
		}
		rep.createDuration = time.Since(rep.start)
		fmt.Fprintf(os.Stderr, "all %d objects created after %v\n", o.accounts+wantLabels, rep.createDuration.Round(time.Millisecond))
	}()

	// Wait for the creating goroutine on every return, so that nothing
	// outlives the phase and createDuration is safe to read.
	defer func() {
		cancel(nil)
		<-createDone
	}()
	if c.operator == nil {
		<-createDone // nothing will become Ready
		return context.Cause(ctx)
	}

	deadline := time.After(o.readyTimeout)
	progress := time.NewTicker(progressInterval)
	defer progress.Stop()
	check := time.NewTicker(time.Second)
	defer check.Stop()
	accountsDone, labelsDone := accounts.done, labels.done
	for accountsDone != nil || labelsDone != nil {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-deadline:
			return fmt.Errorf("not all Ready after %v", o.readyTimeout)
		case <-accountsDone:
			accountsDone = nil
		case <-labelsDone:
			labelsDone = nil
		case <-check.C:
			if err := c.operator.running(); err != nil {
				return err
			}
		case <-progress.C:
			fmt.Fprintf(os.Stderr, "%6.1fs  created %6d/%d  ready: accounts %6d  labels %6d  operator RSS %5.0f MiB  load %s\n",
				time.Since(rep.start).Seconds(), created.Load(), o.accounts+wantLabels, accounts.count(), labels.count(),
				c.operatorRSSMiB(), readLoadAvg().String())
		}
	}
	accountsAt, err := accounts.readyAt()
	if err != nil {
		return err
	}
	labelsAt, err := labels.readyAt()
	if err != nil {
		return err
	}
	rep.accountsReady, rep.labelsReady = accountsAt.Sub(rep.start), labelsAt.Sub(rep.start)
	rep.allReady = max(rep.accountsReady, rep.labelsReady)
	fmt.Fprintf(os.Stderr, "%6.1fs  all Ready: accounts at %.1f s, labels at %.1f s\n",
		time.Since(rep.start).Seconds(), rep.accountsReady.Seconds(), rep.labelsReady.Seconds())
	return nil
}

// createRelay creates the platform namespace and an SmtpRelay that admits
// accounts from every namespace. Its Certificate never becomes ready (there
// is no cert-manager), which does not keep accounts from attaching.
func createRelay(ctx context.Context, c client.Client) error {
	if err := createIgnoringExists(ctx, c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: relayNamespace}}); err != nil {
		return err
	}
	relay := &v1.SmtpRelay{
		ObjectMeta: metav1.ObjectMeta{Name: relayName, Namespace: relayNamespace},
		Spec: v1.SmtpRelaySpec{
			Replicas: ptr.To[int32](2),
			Hostname: "smtp.bench.example",
			TLS:      v1.RelayTLS{IssuerRef: &v1.IssuerReference{Name: "bench-ca"}},
			Queue:    v1.RelayQueue{NATS: v1.NATSQueue{URL: "nats://nats.mailfleet-system.svc:4222"}},
			Accounts: v1.RelayAccounts{Namespaces: v1.AccountNamespaces{From: v1.NamespacesFromAll}},
			// The accounts' sender domains are taken as written: proving
			// them needs DNS, which this benchmark of the API path leaves
			// out (the floor makes the same writes either way).
			SenderDomains: &v1.RelaySenderDomains{Verification: v1.SenderVerificationOptional},
		},
	}
	return createIgnoringExists(ctx, c, relay)
}

// createAll creates the accounts, each followed by its labels, from a
// bounded pool of workers, as a GitOps tool applying a large repository would.
// then, when not nil, is called with each object once it exists.
func createAll(ctx context.Context, c client.Client, o options, created *atomic.Int64, then func(client.Object) error) error {
	jobs := make(chan int)
	errs := make(chan error, o.workers)
	var wg sync.WaitGroup
	for range o.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if err := createAccount(ctx, c, o, i, created, then); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := range o.accounts {
		select {
		case jobs <- i:
		case err = <-errs:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if err == nil && len(errs) > 0 {
		err = <-errs
	}
	return err
}

// createAccount creates account i and its labels.
func createAccount(ctx context.Context, c client.Client, o options, i int, created *atomic.Int64, then func(client.Object) error) error {
	ns, name := tenantNamespace(i%o.namespaces), accountName(i)
	acc := &v1.SmtpAccount{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1.SmtpAccountSpec{
			RelayRef: v1.RelayReference{Name: relayName, Namespace: relayNamespace},
			// A sender domain gives the published shards a realistic size.
			AllowedSenderDomains: []string{ns + ".bench.example"},
		},
	}
	if err := createIgnoringExists(ctx, c, acc); err != nil {
		return err
	}
	created.Add(1)
	if then != nil {
		if err := then(acc); err != nil {
			return err
		}
	}
	for j := range o.labelsPerAccount {
		label := &v1.SmtpLabel{
			ObjectMeta: metav1.ObjectMeta{Name: name + "-l" + strconv.Itoa(j), Namespace: ns},
			Spec:       v1.SmtpLabelSpec{AccountRef: name, LabelID: "l" + strconv.Itoa(j)},
		}
		if err := createIgnoringExists(ctx, c, label); err != nil {
			return err
		}
		created.Add(1)
		if then != nil {
			if err := then(label); err != nil {
				return err
			}
		}
	}
	return nil
}

// createIgnoringExists creates obj, retrying what an overloaded API server
// may answer (429, 5xx, timeouts); an object that exists already is fine.
func createIgnoringExists(ctx context.Context, c client.Client, obj client.Object) error {
	var err error
	for attempt := range 6 {
		benchRequests.add("POST " + resourceOf(obj))
		err = c.Create(ctx, obj)
		switch {
		case err == nil, apierrors.IsAlreadyExists(err):
			return nil
		case apierrors.IsInvalid(err), apierrors.IsForbidden(err), apierrors.IsBadRequest(err), ctx.Err() != nil:
			return fmt.Errorf("create %T %s/%s: %w", obj, obj.GetNamespace(), obj.GetName(), err)
		}
		time.Sleep(time.Duration(attempt+1) * 200 * time.Millisecond)
	}
	return fmt.Errorf("create %T %s/%s, after retries: %w", obj, obj.GetNamespace(), obj.GetName(), err)
}
