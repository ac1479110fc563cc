package awskms

import (
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws/arn"

	"github.com/kmsfs/kmsfs/keysource"
)

// keyRef is a key as the user names it: a key ID, a key ARN, alias/NAME or
// an alias ARN.
type keyRef struct {
	raw   string
	arn   arn.ARN // set when raw is an ARN
	isARN bool
	alias bool
}

func parseKeyRef(s string) (keyRef, error) {
	bad := func(why string) (keyRef, error) {
		return keyRef{}, fmt.Errorf("awskms: key %q: %s; want a key ID, key ARN, alias/NAME or alias ARN: %w", s, why, keysource.ErrInvalid)
	}
	switch {
	case s == "":
		return bad("empty")
	case strings.HasPrefix(s, "arn:"):
		a, err := arn.Parse(s)
		if err != nil {
			return bad("not an ARN")
		}
		if a.Service != "kms" || a.Region == "" || a.AccountID == "" {
			return bad("not a KMS ARN")
		}
		id, isAlias := strings.CutPrefix(a.Resource, "alias/")
		if !isAlias {
			var ok bool
			if id, ok = strings.CutPrefix(a.Resource, "key/"); !ok {
				return bad("ARN names neither key/ nor alias/")
			}
		}
		if id == "" {
			return bad("ARN has an empty name")
		}
		return keyRef{raw: s, arn: a, isARN: true, alias: isAlias}, nil
	case strings.HasPrefix(s, "alias/"):
		if len(s) == len("alias/") {
			return bad("empty alias name")
		}
		return keyRef{raw: s, alias: true}, nil
	case strings.ContainsAny(s, ":/ "):
		return bad("malformed")
	}
	return keyRef{raw: s}, nil
}

// checkRegion refuses an ARN of another region than the client's before
// any call: KMS would only answer NotFound.
func (r keyRef) checkRegion(region string) error {
	if r.isARN && r.arn.Region != region {
		return wrongRegion(r.raw, r.arn.Region, region)
	}
	return nil
}

func wrongRegion(key, keyRegion, clientRegion string) error {
	return fmt.Errorf("awskms: key %s is in region %s but the AWS client is configured for %s "+
		"(set AWS_REGION=%s or use a profile for that region): %w",
		key, keyRegion, clientRegion, keyRegion, keysource.ErrInvalid)
}

// keyARNRegion returns the region of a key ARN, or "" if it is not one.
func keyARNRegion(s string) string {
	a, err := arn.Parse(s)
	if err != nil {
		return ""
	}
	return a.Region
}

// mrkPrefix starts the key ID of every multi-Region key, and only theirs.
const mrkPrefix = "key/mrk-"

// inRegion returns the ARN of the replica in region of a multi-Region key
// named by its ARN in another region, and true; otherwise r and false.
// Replicas share the key ID and key material, so KMS in region decrypts
// what any of them encrypted.
func (r keyRef) inRegion(region string) (keyRef, bool) {
	if !r.isARN || r.alias || !strings.HasPrefix(r.arn.Resource, mrkPrefix) || r.arn.Region == region {
		return r, false
	}
	a := r.arn
	a.Region = region
	return keyRef{raw: a.String(), arn: a, isARN: true}, true
}

// SameKey reports whether the key ARNs a and b name the same KMS key: the
// same ARN, or replicas of one multi-Region key (key ID mrk-…) in any two
// Regions of one partition and account. A single-Region key ID in another
// Region is another key.
func SameKey(a, b string) bool {
	if a == b {
		return true
	}
	x, errX := arn.Parse(a)
	y, errY := arn.Parse(b)
	return errX == nil && errY == nil && x.Service == "kms" && y.Service == "kms" &&
		x.Partition == y.Partition && x.AccountID == y.AccountID &&
		strings.HasPrefix(x.Resource, mrkPrefix) && x.Resource == y.Resource
}
