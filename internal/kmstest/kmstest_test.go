package kmstest_test

import (
	"context"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsfs/kmsfs/internal/kmstest"
)

func TestStart(t *testing.T) {
	e := kmstest.Start(t)
	ctx := context.Background()
	c := e.Client()

	tests := []struct {
		name  string
		keyID string
		want  kmstest.Key
		usage types.KeyUsageType
		state types.KeyState
	}{
		{"key=alias", kmstest.Alias, e.Symmetric, types.KeyUsageTypeEncryptDecrypt, types.KeyStateEnabled},
		{"key=alias-arn", e.AliasARN(), e.Symmetric, types.KeyUsageTypeEncryptDecrypt, types.KeyStateEnabled},
		{"key=symmetric2", e.Symmetric2.ID, e.Symmetric2, types.KeyUsageTypeEncryptDecrypt, types.KeyStateEnabled},
		{"key=rsa-encrypt", e.RSAEncrypt.ARN, e.RSAEncrypt, types.KeyUsageTypeEncryptDecrypt, types.KeyStateEnabled},
		{"key=rsa-sign", e.RSASign.ARN, e.RSASign, types.KeyUsageTypeSignVerify, types.KeyStateEnabled},
		{"key=disabled", e.Disabled.ID, e.Disabled, types.KeyUsageTypeEncryptDecrypt, types.KeyStateDisabled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(tt.keyID)})
			if err != nil {
				t.Fatal(err)
			}
			m := out.KeyMetadata
			if aws.ToString(m.Arn) != tt.want.ARN || aws.ToString(m.KeyId) != tt.want.ID {
				t.Errorf("key = %s (%s), want %s (%s)", aws.ToString(m.Arn), aws.ToString(m.KeyId), tt.want.ARN, tt.want.ID)
			}
			if m.KeyUsage != tt.usage || m.KeyState != tt.state {
				t.Errorf("usage, state = %s, %s; want %s, %s", m.KeyUsage, m.KeyState, tt.usage, tt.state)
			}
		})
	}
}
