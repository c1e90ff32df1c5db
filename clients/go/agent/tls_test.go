package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/invariant-agent/invariant-agent/clients/go/agent"
	"github.com/invariant-agent/invariant-agent/clients/go/internal/agenttest"
)

func TestTLS(t *testing.T) {
	certs := agenttest.NewCertificates(t)
	caFile := certs.CAFile
	otherFile := agenttest.NewCertificates(t).CAFile
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := agenttest.Start(t, agenttest.Options{TLS: &certs})

	dialWith := func(opts ...agent.Option) error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c, err := agent.Dial(ctx, a.Addr, opts...)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Status(ctx)
		return err
	}
	if err := dialWith(agent.WithTLS(caFile)); err != nil {
		t.Errorf("TLS with the right CA: %v", err)
	}
	if err := dialWith(agent.WithTLS(otherFile)); err == nil {
		t.Error("TLS with another CA connected")
	}
	if err := dialWith(); err == nil {
		t.Error("plaintext to a TLS agent connected")
	}
	if err := dialWith(agent.WithTLS(caFile), agent.WithPlaintext()); err == nil {
		t.Error("WithPlaintext after WithTLS still used TLS")
	}
	if err := dialWith(agent.WithTLS(notPEM)); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("TLS with a CA file holding no certificate: %v", err)
	}
	if err := dialWith(agent.WithTLS(filepath.Join(dir, "missing.pem"))); err == nil || !strings.Contains(err.Error(), "read CA file") {
		t.Errorf("TLS with a missing CA file: %v", err)
	}
}
