// Package kubesource is the relay's one window onto the Kubernetes API: a
// credentials.Source that watches the shards the operator publishes, and
// the status ConfigMap through which the relays report to the operator
// (status.go). It lives
// apart from relay/credentials so that the SMTP server, which needs the
// verifier, depends on nothing of Kubernetes (docs/architecture.md, "Rules").
package kubesource

import (
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/credentials"

	"context"
	"fmt"
	"iter"
	"log/slog"
	"maps"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Secrets is a credentials.Source backed by the credentials shards the
// operator publishes for one relay (see wire.ShardCount). It watches them in the relay's own
// namespace only: relay pods never read tenants' Secrets, and the watch
// delivers a change within milliseconds of the operator writing it.
type Secrets struct {
	client    kubernetes.Interface
	namespace string
	relay     string
	selector  string
	log       *slog.Logger

	snap   atomic.Pointer[map[string]*credentials.Account]
	gen    atomic.Uint64
	synced atomic.Bool

	mu     sync.Mutex
	shards map[string][]credentials.Account // by Secret name; the last valid content of each
}

// NewSecrets returns a source for the shards of relay in namespace. Nothing
// is read until Run starts.
func NewSecrets(client kubernetes.Interface, namespace, relay string, log *slog.Logger) *Secrets {
	if log == nil {
		log = slog.Default()
	}
	s := &Secrets{
		client:    client,
		namespace: namespace,
		relay:     relay,
		selector:  labels.Set{wire.ShardLabel: relay}.String(),
		log:       log.With("source", "secrets", "namespace", namespace, "selector", wire.ShardLabel+"="+relay),
		shards:    map[string][]credentials.Account{},
	}
	s.snap.Store(&map[string]*credentials.Account{})
	return s
}

// Lookup implements credentials.Source.
func (s *Secrets) Lookup(apiUser string) (*credentials.Account, bool) {
	a, ok := (*s.snap.Load())[apiUser]
	return a, ok
}

// All yields every account of the current snapshot (webhooks are read
// from them); the accounts are shared and must not be modified.
func (s *Secrets) All() iter.Seq[*credentials.Account] {
	return maps.Values(*s.snap.Load())
}

// Synced reports whether the first full list of shards has been applied;
// until then the relay is not ready, rather than refusing every login.
func (s *Secrets) Synced() bool { return s.synced.Load() }

// Generation counts applied changes.
func (s *Secrets) Generation() uint64 { return s.gen.Load() }

// Len returns the number of accounts.
func (s *Secrets) Len() int { return len(*s.snap.Load()) }

// Run watches the shards until ctx ends. Each shard is watched by name
// (a metadata.name field selector), which is what lets the relay's Role
// grant exactly these Secrets: RBAC authorises a list or watch narrowed to
// one name by that name, and refuses a relay any other Secret.
func (s *Secrets) Run(ctx context.Context) error {
	names := wire.ShardSecretNames(s.relay)
	synced := make([]cache.InformerSynced, 0, len(names))
	var running sync.WaitGroup
	defer running.Wait()
	for _, name := range names {
		informer := coreinformers.NewFilteredSecretInformer(s.client, s.namespace, 10*time.Minute, cache.Indexers{},
			func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
				o.LabelSelector = s.selector
			})
		_, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { s.apply(obj, false) },
			UpdateFunc: func(_, obj any) { s.apply(obj, false) },
			DeleteFunc: func(obj any) { s.apply(obj, true) },
		})
		if err != nil {
			return fmt.Errorf("watch credentials shard %s: %w", name, err)
		}
		running.Go(func() { informer.RunWithContext(ctx) })
		synced = append(synced, informer.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return fmt.Errorf("watch credentials shards in %s: %w", s.namespace, ctx.Err())
	}
	s.synced.Store(true)
	s.log.Info("credentials shards synced", "accounts", s.Len())
	<-ctx.Done()
	return nil
}

func (s *Secrets) apply(obj any, deleted bool) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj, deleted = tomb.Obj, true
	}
	secret, ok := obj.(*corev1.Secret)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if deleted {
		delete(s.shards, secret.Name)
	} else {
		accounts, err := wire.ParseShard(secret.Data[wire.ShardDataKey])
		if err != nil {
			// Keep serving the shard's last valid content: a bad write
			// must not lock every account of the shard out.
			s.log.Error("credentials shard refused", "secret", secret.Name, "err", err)
			return
		}
		s.shards[secret.Name] = accounts
	}
	s.rebuild()
}

// rebuild merges the shards into a new snapshot. Shards are merged in name
// order so that, should an api_user ever appear in two, the result does not
// depend on event order.
func (s *Secrets) rebuild() {
	names := make([]string, 0, len(s.shards))
	total := 0
	for name, accounts := range s.shards {
		names = append(names, name)
		total += len(accounts)
	}
	sort.Strings(names)
	m := make(map[string]*credentials.Account, total)
	for _, name := range names {
		accounts := s.shards[name]
		for i := range accounts {
			if _, dup := m[accounts[i].APIUser]; dup {
				s.log.Warn("api_user in two shards; keeping the first", "api_user", accounts[i].APIUser, "secret", name)
				continue
			}
			m[accounts[i].APIUser] = &accounts[i]
		}
	}
	s.snap.Store(&m)
	s.gen.Add(1)
}
