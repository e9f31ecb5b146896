package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/controllers/render"
	"github.com/mailfleet/mailfleet/relay/config"
)

// chooseStream settles the relay's queue stream before it is rendered and
// records it in status.stream. It returns a message, and leaves the status
// alone, when another SmtpRelay has the stream: two relays on one stream
// would deliver, and ack, each other's mail.
func (r *RelayReconciler) chooseStream(ctx context.Context, relay *v1.SmtpRelay) (string, error) {
	if relay.Spec.Queue.NATS.Stream == "" && relay.Status.Stream == "" {
		legacy, err := r.renderedStream(ctx, relay)
		if err != nil {
			return "", err
		}
		relay.Status.Stream = legacy
	}
	stream := render.Stream(relay)
	taken, err := r.streamTaken(ctx, relay, stream)
	if err != nil || taken {
		return fmt.Sprintf("queue stream %q is used by another SmtpRelay; set spec.queue.nats.stream to a name of this relay's own", stream), err
	}
	relay.Status.Stream = stream
	return "", nil
}

// renderedStream is the stream named in the config an earlier operator
// rendered for this relay, "" when there is none. A relay that predates
// status.stream keeps the stream its pods already use, whatever the default
// has become.
func (r *RelayReconciler) renderedStream(ctx context.Context, relay *v1.SmtpRelay) (string, error) {
	cm := &corev1.ConfigMap{}
	err := r.Reader.Get(ctx, types.NamespacedName{Namespace: relay.Namespace, Name: render.ConfigMapName(relay.Name)}, cm)
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read config of relay %s: %w", relay.Name, err)
	}
	if !metav1.IsControlledBy(cm, relay) {
		return "", nil // someone else's: the name conflict check speaks for it
	}
	var c config.Config
	if err := yaml.Unmarshal([]byte(cm.Data[render.ConfigKey]), &c); err != nil || c.Queue.NATS == nil {
		return "", nil // not a config this operator wrote: start afresh
	}
	return c.Queue.NATS.Stream, nil
}

// streamTaken reports whether another relay has a better claim to stream:
// one whose pods already use it, else an older one.
func (r *RelayReconciler) streamTaken(ctx context.Context, relay *v1.SmtpRelay, stream string) (bool, error) {
	var list v1.SmtpRelayList
	if err := r.Client.List(ctx, &list); err != nil {
		return false, fmt.Errorf("list relays to check stream %s: %w", stream, err)
	}
	for i := range list.Items {
		other := &list.Items[i]
		if other.UID == relay.UID || render.Stream(other) != stream {
			continue
		}
		if streamClaimBefore(other, relay, stream) {
			return true, nil
		}
	}
	return false, nil
}

// streamClaimBefore orders two relays' claims to one stream: using it
// beats asking for it, then the older relay wins, then the name decides.
func streamClaimBefore(a, b *v1.SmtpRelay, stream string) bool {
	aUses, bUses := a.Status.Stream == stream, b.Status.Stream == stream
	if aUses != bUses {
		return aUses
	}
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
}
