package pkcs11_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/pkcs11"
)

func TestParseURI(t *testing.T) {
	tests := []struct {
		in   string
		want pkcs11.URI
	}{
		{"pkcs11:token=T;object=K", pkcs11.URI{Token: "T", Object: "K"}},
		{"PKCS11:object=K;token=T", pkcs11.URI{Token: "T", Object: "K"}},
		{"pkcs11:token=My%20Token;object=a%3Bb%3Fc%26d", pkcs11.URI{Token: "My Token", Object: "a;b?c&d"}},
		{"pkcs11:token=a+b;object=%e2%82%ac", pkcs11.URI{Token: "a+b", Object: "€"}},
		{"pkcs11:token=T;object=K;id=%01%FF;type=secret-key", pkcs11.URI{Token: "T", Object: "K", ID: []byte{1, 0xff}, ObjectType: "secret-key"}},
		{"pkcs11:token=T;object=K;type=private", pkcs11.URI{Token: "T", Object: "K", ObjectType: "private"}},
		{"pkcs11:token=T;object=K;id=", pkcs11.URI{Token: "T", Object: "K", ID: []byte{}}},
		{"pkcs11:token=T;object=K?module-path=/usr/lib/x%20y.so&pin-source=file:/run/pin",
			pkcs11.URI{Token: "T", Object: "K", ModulePath: "/usr/lib/x y.so", PINSource: "file:/run/pin"}},
		{"pkcs11:token=T;object=K?pin-source=file:///run/pin", pkcs11.URI{Token: "T", Object: "K", PINSource: "file:///run/pin"}},
		{"pkcs11:token=T;object=K?pin-source=env:HSM_PIN_2", pkcs11.URI{Token: "T", Object: "K", PINSource: "env:HSM_PIN_2"}},
		{"pkcs11:token=T;object=K?pin-source=file%3A%2Frun%2Fpin", pkcs11.URI{Token: "T", Object: "K", PINSource: "file:/run/pin"}},
		{"pkcs11:serial=0A%201;object=K", pkcs11.URI{Serial: "0A 1", Object: "K"}},
		{"pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;slot-id=7;object=K",
			pkcs11.URI{Model: "SoftHSM v2", Manufacturer: "SoftHSM project", SlotID: ptr(uint(7)), Object: "K"}},
		{"pkcs11:token=T;object=K?wrap=kwp&max-sessions=4", pkcs11.URI{Token: "T", Object: "K", Wrap: "kwp", MaxSessions: 4}},
	}
	for _, tt := range tests {
		t.Run("uri="+tt.in, func(t *testing.T) {
			got, err := pkcs11.ParseURI(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if !sameURI(got, tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			again, err := pkcs11.ParseURI(got.String())
			if err != nil || !sameURI(again, got) {
				t.Fatalf("String %q parses to %+v, %v", got.String(), again, err)
			}
			key, err := pkcs11.ParseURI(got.KeyID())
			if err != nil || key.Token != got.Token || key.Object != got.Object || !bytes.Equal(key.ID, got.ID) {
				t.Fatalf("KeyID %q parses to %+v, %v", got.KeyID(), key, err)
			}
		})
	}
}

func sameURI(a, b pkcs11.URI) bool {
	return a.Token == b.Token && a.Object == b.Object && bytes.Equal(a.ID, b.ID) && (a.ID == nil) == (b.ID == nil) &&
		a.ObjectType == b.ObjectType && a.ModulePath == b.ModulePath && a.PINSource == b.PINSource &&
		a.Serial == b.Serial && a.Model == b.Model && a.Manufacturer == b.Manufacturer &&
		(a.SlotID == nil) == (b.SlotID == nil) && (a.SlotID == nil || *a.SlotID == *b.SlotID) &&
		a.Wrap == b.Wrap && a.MaxSessions == b.MaxSessions
}

func ptr[T any](v T) *T { return &v }

func TestParseURIErrors(t *testing.T) {
	const secret = "S3cr3t-1234"
	tests := []struct {
		name, in, want string
	}{
		{"scheme=none", "token=T;object=K", "starting with pkcs11:"},
		{"scheme=other", "pkcs12:token=T;object=K", "starting with pkcs11:"},
		{"token=missing", "pkcs11:object=K", "token=<label> (or serial, model, manufacturer, slot-id) is required"},
		{"token=empty", "pkcs11:token=;object=K", "token=<label> (or serial, model, manufacturer, slot-id) is required"},
		{"object=missing", "pkcs11:token=T", "object=<key label> is required"},
		{"object=missing,query", "pkcs11:token=T?module-path=/m.so", "object=<key label> is required"},
		{"path=empty", "pkcs11:", "token=<label> (or serial, model, manufacturer, slot-id) is required"},
		{"slot-id=word", "pkcs11:slot-id=one;object=K", "slot-id must be a decimal number"},
		{"wrap=unknown", "pkcs11:token=T;object=K?wrap=cbc", "wrap must be gcm or kwp"},
		{"max-sessions=0", "pkcs11:token=T;object=K?max-sessions=0", "max-sessions must be a number from 1 to"},
		{"max-sessions=huge", "pkcs11:token=T;object=K?max-sessions=99999", "max-sessions must be a number from 1 to"},
		{"attr=twice", "pkcs11:token=T;object=K;token=U", `"token" appears twice`},
		{"attr=no-value", "pkcs11:token=T;object=K;" + secret, "path attribute 3 is not name=value"},
		{"attr=empty", "pkcs11:token=T;;object=K", "path attribute 2 is not name=value"},
		{"attr=unknown", "pkcs11:token=T;object=K;slot-description=1", `"slot-description" is not supported`},
		{"query=unknown", "pkcs11:token=T;object=K?x-foo=1", `"x-foo" is not supported`},
		{"type=cert", "pkcs11:token=T;object=K;type=cert", "type must be"},
		{"pct=bad", "pkcs11:token=T%zz;object=K", `"token": bad percent-encoding`},
		{"pct=short", "pkcs11:token=T;object=K%4", `"object": bad percent-encoding`},
		{"fragment", "pkcs11:token=T;object=K#x", "fragment"},
		{"module-path=empty", "pkcs11:token=T;object=K?module-path=", "module-path is empty"},
		{"module-name", "pkcs11:token=T;object=K?module-name=softhsm2", "module-path="},
		{"pin-value", "pkcs11:token=T;object=K?pin-value=" + secret, "pin-value is refused"},
		{"pin-source=literal", "pkcs11:token=T;object=K?pin-source=" + secret, "a PIN itself is never accepted"},
		{"pin-source=bare-path", "pkcs11:token=T;object=K?pin-source=/run/" + secret, "a PIN itself is never accepted"},
		{"pin-source=relative-file", "pkcs11:token=T;object=K?pin-source=file:" + secret, "absolute path"},
		{"pin-source=remote-file", "pkcs11:token=T;object=K?pin-source=file://host/" + secret, "absolute path"},
		{"pin-source=env-empty", "pkcs11:token=T;object=K?pin-source=env:", "variable name"},
		{"pin-source=env-bad", "pkcs11:token=T;object=K?pin-source=env:1" + secret, "variable name"},
		{"pin-source=pipe", "pkcs11:token=T;object=K?pin-source=%7C/bin/echo%20" + secret, "a PIN itself is never accepted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := pkcs11.ParseURI(tt.in)
			if err == nil {
				t.Fatal("parsed")
			}
			if !errors.Is(err, keysource.ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error %q echoes a value", err)
			}
		})
	}
}

func TestURIKeyID(t *testing.T) {
	tests := []struct {
		u    pkcs11.URI
		want string
	}{
		{pkcs11.URI{Token: "T", Object: "K", ModulePath: "/m.so", PINSource: "env:P"}, "pkcs11:token=T;object=K"},
		{pkcs11.URI{Token: "my token", Object: "a;b=c/d", ID: []byte("A\x01")}, "pkcs11:token=my%20token;object=a%3Bb%3Dc%2Fd;id=%41%01"},
		{pkcs11.URI{Token: "ü", Object: "k_1.2~x-y", ObjectType: "private"}, "pkcs11:token=%C3%BC;object=k_1.2~x-y"},
	}
	for _, tt := range tests {
		t.Run("want="+tt.want, func(t *testing.T) {
			if got := tt.u.KeyID(); got != tt.want {
				t.Errorf("KeyID %q, want %q", got, tt.want)
			}
			if s := tt.u.String(); strings.Contains(s, "pin-value") {
				t.Errorf("String %q holds a pin-value", s)
			}
		})
	}
}

func FuzzParseURI(f *testing.F) {
	for _, s := range []string{
		"pkcs11:token=T;object=K",
		"pkcs11:token=My%20Token;object=a%3Bb;id=%01%02;type=secret-key?module-path=/usr/lib/m.so&pin-source=file:/run/pin",
		"pkcs11:token=T;object=K?pin-source=env:PIN",
		"pkcs11:token=T;object=K?pin-source=file:///run/pin",
		"pkcs11:token=%;object=",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := pkcs11.ParseURI(s)
		if err != nil {
			return
		}
		again, err := pkcs11.ParseURI(u.String())
		if err != nil || !sameURI(again, u) {
			t.Fatalf("%q: String %q parses to %+v, %v; want %+v", s, u.String(), again, err, u)
		}
		key, err := pkcs11.ParseURI(u.KeyID())
		if err != nil || key.Token != u.Token || key.Object != u.Object || !bytes.Equal(key.ID, u.ID) {
			t.Fatalf("%q: KeyID %q parses to %+v, %v", s, u.KeyID(), key, err)
		}
		for i := 0; i < len(u.KeyID()); i++ {
			if c := u.KeyID()[i]; c < 0x21 || c > 0x7e {
				t.Fatalf("KeyID %q has byte %#x", u.KeyID(), c)
			}
		}
	})
}
