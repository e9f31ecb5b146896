package controllers

import (
	"strings"

	corev1 "k8s.io/api/core/v1"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/relay/config"
)

// Where the relay container finds the Secrets its queue and delivery need.
const (
	natsCredsFile         = "/etc/mailfleet/nats/creds/nats.creds"
	natsAuthDir           = "/etc/mailfleet/nats/auth"
	natsCAFile            = "/etc/mailfleet/nats/ca/ca.crt"
	smarthostAuthDir      = "/etc/mailfleet/smarthost/auth"
	smarthostCAFile       = "/etc/mailfleet/smarthost/ca/ca.crt"
	secretUsernameKey     = "username"
	secretPasswordKey     = "password"
	defaultQueueReplicas  = 3
	defaultStreamPrefix   = "MAILFLEET_"
	defaultDeliveryWorker = 16
)

// relayStream is the queue stream's name: unique per relay, so relays that
// share a JetStream never take each other's messages.
func relayStream(relay *v1.SmtpRelay) string {
	if s := relay.Spec.Queue.NATS.Stream; s != "" {
		return s
	}
	name := strings.ToUpper(relay.Namespace + "_" + relay.Name)
	return defaultStreamPrefix + strings.ReplaceAll(name, "-", "_")
}

func relayQueueConfig(relay *v1.SmtpRelay) config.Queue {
	n := relay.Spec.Queue.NATS
	q := &config.NATSQueue{URL: n.URL, Stream: relayStream(relay), Replicas: int(n.Replicas)}
	if q.Replicas == 0 {
		q.Replicas = defaultQueueReplicas
	}
	if n.CredentialsSecretRef != nil {
		q.CredentialsFile = natsCredsFile
	}
	if n.AuthSecretRef != nil {
		q.UserFile, q.PasswordFile = natsAuthDir+"/"+secretUsernameKey, natsAuthDir+"/"+secretPasswordKey
	}
	if n.CASecretRef != nil {
		q.CAFile = natsCAFile
	}
	return config.Queue{NATS: q}
}

func relayDeliveryConfig(relay *v1.SmtpRelay) config.Delivery {
	d := relay.Spec.Delivery
	out := config.Delivery{Workers: int(d.Workers), LabelHeader: d.LabelHeader}
	if out.Workers == 0 {
		out.Workers = defaultDeliveryWorker
	}
	if r := d.Retry.MinBackoff; r != nil {
		out.Backoff.Min = config.Duration{Duration: r.Duration}
	}
	if r := d.Retry.MaxBackoff; r != nil {
		out.Backoff.Max = config.Duration{Duration: r.Duration}
	}
	if r := d.Retry.MaxAge; r != nil {
		out.Expiry = config.Duration{Duration: r.Duration}
	}
	if sh := d.Smarthost; sh != nil {
		tlsMode := sh.TLS
		if tlsMode == "" {
			tlsMode = v1.SmarthostTLSRequired
		}
		out.Smarthost = &config.Smarthost{Host: sh.Host, Port: int(sh.Port), TLS: strings.ToLower(string(tlsMode))}
		if sh.AuthSecretRef != nil {
			out.Smarthost.UsernameFile = smarthostAuthDir + "/" + secretUsernameKey
			out.Smarthost.PasswordFile = smarthostAuthDir + "/" + secretPasswordKey
		}
		if sh.CASecretRef != nil {
			out.Smarthost.CAFile = smarthostCAFile
		}
	}
	return out
}

// relaySecretMount is a Secret the relay container mounts, projected to
// only the keys it reads.
type relaySecretMount struct {
	volume, dir, secret string
	items               []corev1.KeyToPath
}

func relayQueueMounts(relay *v1.SmtpRelay) []relaySecretMount {
	var m []relaySecretMount
	n := relay.Spec.Queue.NATS
	if ref := n.CredentialsSecretRef; ref != nil {
		m = append(m, relaySecretMount{"nats-creds", dirOf(natsCredsFile), ref.Name, []corev1.KeyToPath{{Key: ref.Key, Path: "nats.creds"}}})
	}
	if ref := n.AuthSecretRef; ref != nil {
		m = append(m, relaySecretMount{"nats-auth", natsAuthDir, ref.Name, userPasswordItems()})
	}
	if ref := n.CASecretRef; ref != nil {
		m = append(m, relaySecretMount{"nats-ca", dirOf(natsCAFile), ref.Name, []corev1.KeyToPath{{Key: ref.Key, Path: "ca.crt"}}})
	}
	if sh := relay.Spec.Delivery.Smarthost; sh != nil {
		if ref := sh.AuthSecretRef; ref != nil {
			m = append(m, relaySecretMount{"smarthost-auth", smarthostAuthDir, ref.Name, userPasswordItems()})
		}
		if ref := sh.CASecretRef; ref != nil {
			m = append(m, relaySecretMount{"smarthost-ca", dirOf(smarthostCAFile), ref.Name, []corev1.KeyToPath{{Key: ref.Key, Path: "ca.crt"}}})
		}
	}
	return m
}

func userPasswordItems() []corev1.KeyToPath {
	return []corev1.KeyToPath{{Key: secretUsernameKey, Path: secretUsernameKey}, {Key: secretPasswordKey, Path: secretPasswordKey}}
}

func dirOf(path string) string { return path[:strings.LastIndex(path, "/")] }

// queueSecretRefs are the queue's and delivery's Secrets, with the field
// that names each, for the relay's status.
func queueSecretRefs(relay *v1.SmtpRelay) []relaySecretRef {
	var refs []relaySecretRef
	n := relay.Spec.Queue.NATS
	if n.CredentialsSecretRef != nil {
		refs = append(refs, relaySecretRef{"spec.queue.nats.credentialsSecretRef", n.CredentialsSecretRef.Name})
	}
	if n.AuthSecretRef != nil {
		refs = append(refs, relaySecretRef{"spec.queue.nats.authSecretRef", n.AuthSecretRef.Name})
	}
	if n.CASecretRef != nil {
		refs = append(refs, relaySecretRef{"spec.queue.nats.caSecretRef", n.CASecretRef.Name})
	}
	if sh := relay.Spec.Delivery.Smarthost; sh != nil {
		if sh.AuthSecretRef != nil {
			refs = append(refs, relaySecretRef{"spec.delivery.smarthost.authSecretRef", sh.AuthSecretRef.Name})
		}
		if sh.CASecretRef != nil {
			refs = append(refs, relaySecretRef{"spec.delivery.smarthost.caSecretRef", sh.CASecretRef.Name})
		}
	}
	return refs
}
