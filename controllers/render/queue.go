package render

import (
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
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
	defaultDeliveryWorker = 64
)

// Stream is the queue stream's name: the one the user chose, else the
// one the relay already uses (status.stream), else the default.
func Stream(relay *v1.SmtpRelay) string {
	if s := relay.Spec.Queue.NATS.Stream; s != "" {
		return s
	}
	if s := relay.Status.Stream; s != "" {
		return s
	}
	return wire.StreamFor(relay.Namespace, relay.Name)
}

func relayQueueConfig(relay *v1.SmtpRelay) config.Queue {
	n := relay.Spec.Queue.NATS
	q := &config.NATSQueue{URL: n.URL, Stream: Stream(relay), Replicas: int(n.Replicas)}
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
	out := config.Delivery{Workers: int(d.Workers), LabelHeader: d.LabelHeader,
		AllowedDestinations: slices.Clone(d.AllowedDestinations), AllowAddressLiterals: d.AllowAddressLiterals}
	if out.Workers == 0 {
		out.Workers = defaultDeliveryWorker
	}
	out.IgnoreMTASTS = d.MTASTS == "Ignore"
	for _, dest := range d.Destinations {
		out.Destinations = append(out.Destinations, config.Destination{
			Name: dest.Name, Domains: slices.Clone(dest.Domains), MXHosts: slices.Clone(dest.MXHosts),
			TLS: destinationTLSMode(dest.TLS), MaxConnections: int(ptr.Deref(dest.MaxConnections, 0)),
			MaxPerMinute:             int(ptr.Deref(dest.MaxMessagesPerMinute, 0)),
			MaxMessagesPerConnection: int(ptr.Deref(dest.MaxMessagesPerConnection, 0)),
		})
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

// secretMount is a Secret a container of the relay pod mounts, projected
// to only the keys it reads, with the spec field that names it (for the
// relay's status when the Secret is missing).
type secretMount struct {
	field, volume, dir, secret string
	items                      []corev1.KeyToPath
}

func (m secretMount) volumeMount() corev1.VolumeMount {
	return corev1.VolumeMount{Name: m.volume, MountPath: m.dir, ReadOnly: true}
}

func (m secretMount) podVolume() corev1.Volume {
	return corev1.Volume{Name: m.volume, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
		SecretName: m.secret, Items: m.items, DefaultMode: ptr.To(int32(0o440)),
	}}}
}

// relayQueueMounts are the relay container's Secrets: the queue's and the
// smarthost's credentials and CAs.
func relayQueueMounts(relay *v1.SmtpRelay) []secretMount {
	var m []secretMount
	n := relay.Spec.Queue.NATS
	if ref := n.CredentialsSecretRef; ref != nil {
		m = append(m, secretMount{"spec.queue.nats.credentialsSecretRef", "nats-creds", dirOf(natsCredsFile), ref.Name, keyItem(ref.Key, "nats.creds")})
	}
	if ref := n.AuthSecretRef; ref != nil {
		m = append(m, secretMount{"spec.queue.nats.authSecretRef", "nats-auth", natsAuthDir, ref.Name, userPasswordItems()})
	}
	if ref := n.CASecretRef; ref != nil {
		m = append(m, secretMount{"spec.queue.nats.caSecretRef", "nats-ca", dirOf(natsCAFile), ref.Name, keyItem(ref.Key, "ca.crt")})
	}
	if sh := relay.Spec.Delivery.Smarthost; sh != nil {
		if ref := sh.AuthSecretRef; ref != nil {
			m = append(m, secretMount{"spec.delivery.smarthost.authSecretRef", "smarthost-auth", smarthostAuthDir, ref.Name, userPasswordItems()})
		}
		if ref := sh.CASecretRef; ref != nil {
			m = append(m, secretMount{"spec.delivery.smarthost.caSecretRef", "smarthost-ca", dirOf(smarthostCAFile), ref.Name, keyItem(ref.Key, "ca.crt")})
		}
	}
	return m
}

func keyItem(key, path string) []corev1.KeyToPath { return []corev1.KeyToPath{{Key: key, Path: path}} }

func userPasswordItems() []corev1.KeyToPath {
	return []corev1.KeyToPath{{Key: secretUsernameKey, Path: secretUsernameKey}, {Key: secretPasswordKey, Path: secretPasswordKey}}
}

func dirOf(path string) string { return path[:strings.LastIndex(path, "/")] }

// destinationTLSMode is the relay's spelling of a destination's TLS (its
// smtpclient mode); "" for the default, opportunistic.
func destinationTLSMode(tls string) string {
	switch tls {
	case "Required":
		return "encrypt"
	case "Verify":
		return "required"
	}
	return ""
}
