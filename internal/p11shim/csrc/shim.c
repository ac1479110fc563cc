/*
 * kmsfs p11shim: a PKCS#11 module that forwards every call to another
 * module (SoftHSM2 in the tests) while behaving the way a named HSM does
 * where HSMs differ from SoftHSM. What each behaviour imitates, and the
 * vendor documentation it follows, is in ../README.md.
 *
 * The configuration is read at C_Initialize from the file named by
 * $KMSFS_P11SHIM_CONFIG, so every process that loads the shim can have
 * its own. Lines are key=value; see struct config and load_config.
 *
 * Session handles are the shim's own, never reused, and mapped to the
 * handles of the module underneath: SoftHSM reuses a closed session's
 * handle, and a dropped session's old handle must stay invalid, as it
 * does on an HSM after a failover.
 *
 * Nothing here logs: PINs and key material pass through untouched. Only
 * a broken configuration file is reported on stderr.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CK_PTR *
#define CK_DEFINE_FUNCTION(rv, name) rv name
#define CK_DECLARE_FUNCTION(rv, name) rv name
#define CK_DECLARE_FUNCTION_POINTER(rv, name) rv (*name)
#define CK_CALLBACK_FUNCTION(rv, name) rv (*name)
#define NULL_PTR NULL
#include "pkcs11.h"

/* RFC 5649 key wrap as PKCS#11 3.0 numbers it; the 2.40 headers lack it. */
#define CKM_AES_KEY_WRAP_KWP 0x0000210BUL

#define MAX_HIDDEN 16
#define MAX_IV 16

enum iv_mode { IV_CALLER, IV_WRITE_BACK, IV_APPEND };
enum gcm_struct { GCM_PASS, GCM_WITH_IVBITS, GCM_WITHOUT_IVBITS };

/* CK_GCM_PARAMS as the 2.40 specification's text has it, without the
 * ulIvBits field that its header (and CK_GCM_PARAMS here) carries. */
typedef struct {
	CK_BYTE_PTR pIv;
	CK_ULONG ulIvLen;
	CK_BYTE_PTR pAAD;
	CK_ULONG ulAADLen;
	CK_ULONG ulTagBits;
} gcm_params5;

struct config {
	char module[4096];
	int refuse_ro;                 /* C_OpenSession without CKF_RW_SESSION fails */
	enum iv_mode iv_mode;          /* who chooses AES-GCM encryption IVs */
	CK_ULONG iv_len;               /* length of a token-generated IV */
	enum gcm_struct gcm_struct;    /* which CK_GCM_PARAMS layout is accepted */
	CK_MECHANISM_TYPE kwp;         /* RFC 5649 offered under this number; 0: unchanged */
	CK_MECHANISM_TYPE hidden[MAX_HIDDEN];
	size_t nhidden;
	int sensitive;                 /* secret keys are sensitive by policy */
	CK_ULONG max_sessions;         /* per slot; 0: no cap */
	unsigned long drop_every;      /* calls between session drops; 0: never */
};

struct session {
	CK_SESSION_HANDLE virt, real;
	CK_SLOT_ID slot;
	/* A token-generated IV to hand back when the encryption ends. */
	enum iv_mode pending;
	CK_BYTE iv[MAX_IV];
	CK_ULONG iv_len;
	CK_BYTE_PTR caller_iv;
};

static struct {
	/* mu guards everything below it; down and cfg change only in
	 * C_Initialize and C_Finalize, which the application may not run
	 * concurrently with other calls. */
	pthread_mutex_t mu;
	/* Every forwarded call holds drop shared, so a session drop, which
	 * takes it exclusively, never closes a session under a running call
	 * and the module underneath cannot hand its handle to someone else
	 * mid-call. */
	pthread_rwlock_t drop;
	void *dl;
	CK_FUNCTION_LIST_PTR down;
	struct config cfg;
	struct session *sess;
	size_t nsess, capsess;
	CK_SESSION_HANDLE next;
	unsigned long calls;
} st = { .mu = PTHREAD_MUTEX_INITIALIZER, .drop = PTHREAD_RWLOCK_INITIALIZER };

/* ---- configuration ---- */

static int parse_ulong(const char *s, unsigned long *v)
{
	char *end;
	if (!*s)
		return -1;
	*v = strtoul(s, &end, 0);
	return *end ? -1 : 0;
}

/* pick sets *v to the index of val in the NULL-ended names. */
static int pick(const char *val, const char *const *names, int *v)
{
	int i;
	for (i = 0; names[i]; i++)
		if (!strcmp(val, names[i])) {
			*v = i;
			return 0;
		}
	return -1;
}

static int config_line(struct config *c, const char *key, const char *val)
{
	unsigned long v = 0;
	if (!strcmp(key, "module")) {
		if (strlen(val) >= sizeof c->module)
			return -1;
		strcpy(c->module, val);
		return 0;
	}
	if (!strcmp(key, "gcm_iv"))
		return pick(val, (const char *const[]){ "caller", "write-back", "append", NULL }, (int *)&c->iv_mode);
	if (!strcmp(key, "gcm_struct"))
		return pick(val, (const char *const[]){ "pass", "with-ivbits", "without-ivbits", NULL }, (int *)&c->gcm_struct);
	if (parse_ulong(val, &v))
		return -1;
	if (!strcmp(key, "refuse_read_only_sessions"))
		c->refuse_ro = v != 0;
	else if (!strcmp(key, "gcm_iv_len") && v > 0 && v <= MAX_IV)
		c->iv_len = v;
	else if (!strcmp(key, "kwp_mechanism"))
		c->kwp = v;
	else if (!strcmp(key, "hide_mechanism") && c->nhidden < MAX_HIDDEN)
		c->hidden[c->nhidden++] = v;
	else if (!strcmp(key, "sensitive_keys"))
		c->sensitive = v != 0;
	else if (!strcmp(key, "max_sessions"))
		c->max_sessions = v;
	else if (!strcmp(key, "drop_every"))
		c->drop_every = v;
	else
		return -1;
	return 0;
}

static CK_RV load_config(struct config *c)
{
	const char *path = getenv("KMSFS_P11SHIM_CONFIG");
	char line[4352];
	int n = 0;
	FILE *f;

	memset(c, 0, sizeof *c);
	c->iv_len = 12;
	if (!path || !*path) {
		fprintf(stderr, "p11shim: KMSFS_P11SHIM_CONFIG is not set\n");
		return CKR_GENERAL_ERROR;
	}
	if (!(f = fopen(path, "re"))) {
		fprintf(stderr, "p11shim: config %s: cannot open\n", path);
		return CKR_GENERAL_ERROR;
	}
	while (fgets(line, sizeof line, f)) {
		char *eq, *nl = strchr(line, '\n');
		n++;
		if (nl)
			*nl = 0;
		if (!line[0] || line[0] == '#')
			continue;
		if (!(eq = strchr(line, '=')) || (*eq = 0, config_line(c, line, eq + 1))) {
			fprintf(stderr, "p11shim: config %s: line %d: bad setting %s\n", path, n, line);
			fclose(f);
			return CKR_GENERAL_ERROR;
		}
	}
	fclose(f);
	if (!c->module[0]) {
		fprintf(stderr, "p11shim: config %s: no module\n", path);
		return CKR_GENERAL_ERROR;
	}
	return CKR_OK;
}

/* ---- sessions and call accounting ---- */

/* find returns the session h, or NULL; st.mu must be held. */
static struct session *find(CK_SESSION_HANDLE h)
{
	size_t i;
	for (i = 0; i < st.nsess; i++)
		if (st.sess[i].virt == h)
			return &st.sess[i];
	return NULL;
}

/* drop_all closes every session underneath, which also ends the login:
 * PKCS#11 logs the user out when an application's last session on a
 * token closes. */
static void drop_all(void)
{
	size_t i;
	pthread_mutex_lock(&st.mu);
	for (i = 0; i < st.nsess; i++)
		st.down->C_CloseSession(st.sess[i].real);
	st.nsess = 0;
	pthread_mutex_unlock(&st.mu);
}

/* enter starts a forwarded call; leave ends it. */
static CK_RV enter(void)
{
	int drop = 0;
	pthread_mutex_lock(&st.mu);
	if (!st.down) {
		pthread_mutex_unlock(&st.mu);
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	}
	if (st.cfg.drop_every && ++st.calls > st.cfg.drop_every) {
		st.calls = 1;
		drop = 1;
	}
	pthread_mutex_unlock(&st.mu);
	if (drop) {
		pthread_rwlock_wrlock(&st.drop);
		drop_all();
		pthread_rwlock_unlock(&st.drop);
	}
	pthread_rwlock_rdlock(&st.drop);
	return CKR_OK;
}

static CK_RV leave(CK_RV rv)
{
	pthread_rwlock_unlock(&st.drop);
	return rv;
}

/* lookup copies session h into *out. */
static CK_RV lookup(CK_SESSION_HANDLE h, struct session *out)
{
	struct session *s;
	pthread_mutex_lock(&st.mu);
	if ((s = find(h)))
		*out = *s;
	pthread_mutex_unlock(&st.mu);
	return s ? CKR_OK : CKR_SESSION_HANDLE_INVALID;
}

static CK_RV real_of(CK_SESSION_HANDLE h, CK_SESSION_HANDLE *real)
{
	struct session s;
	CK_RV rv = lookup(h, &s);
	*real = s.real;
	return rv;
}

static void set_pending(CK_SESSION_HANDLE h, enum iv_mode m, const CK_BYTE *iv, CK_ULONG len, CK_BYTE_PTR caller_iv)
{
	struct session *s;
	pthread_mutex_lock(&st.mu);
	if ((s = find(h))) {
		s->pending = m;
		memcpy(s->iv, iv, len);
		s->iv_len = len;
		s->caller_iv = caller_iv;
	}
	pthread_mutex_unlock(&st.mu);
}

/* ---- mechanisms and templates ---- */

static int hidden(CK_MECHANISM_TYPE m)
{
	size_t i;
	for (i = 0; i < st.cfg.nhidden; i++)
		if (st.cfg.hidden[i] == m)
			return 1;
	return 0;
}

/* rename_in maps a mechanism number as the caller sees it to the one
 * underneath, or returns CKR_MECHANISM_INVALID for one the profile lacks. */
static CK_RV rename_in(CK_MECHANISM_TYPE *m)
{
	if (hidden(*m))
		return CKR_MECHANISM_INVALID;
	if (st.cfg.kwp && *m == CKM_AES_KEY_WRAP_PAD)
		return CKR_MECHANISM_INVALID;
	if (st.cfg.kwp && *m == st.cfg.kwp)
		*m = CKM_AES_KEY_WRAP_PAD;
	return CKR_OK;
}

/* gcm_view reads the caller's AES-GCM parameters in either layout. */
static CK_RV gcm_view(const CK_MECHANISM *m, CK_GCM_PARAMS *p)
{
	gcm_params5 p5;
	if (!m->pParameter)
		return CKR_MECHANISM_PARAM_INVALID;
	if (m->ulParameterLen == sizeof *p) {
		memcpy(p, m->pParameter, sizeof *p);
		return CKR_OK;
	}
	if (m->ulParameterLen != sizeof p5)
		return CKR_MECHANISM_PARAM_INVALID;
	memcpy(&p5, m->pParameter, sizeof p5);
	p->pIv = p5.pIv;
	p->ulIvLen = p5.ulIvLen;
	p->ulIvBits = 8 * p5.ulIvLen;
	p->pAAD = p5.pAAD;
	p->ulAADLen = p5.ulAADLen;
	p->ulTagBits = p5.ulTagBits;
	return CKR_OK;
}

/* translate copies *in to *out as the module underneath needs it: the
 * mechanism renamed back, AES-GCM parameters checked against the one
 * accepted layout and given to SoftHSM in its own (in *gcm). */
static CK_RV translate(const CK_MECHANISM *in, CK_MECHANISM *out, CK_GCM_PARAMS *gcm)
{
	CK_ULONG want;
	CK_RV rv;
	if (!in)
		return CKR_ARGUMENTS_BAD;
	*out = *in;
	if ((rv = rename_in(&out->mechanism)) != CKR_OK)
		return rv;
	if (out->mechanism != CKM_AES_GCM || st.cfg.gcm_struct == GCM_PASS)
		return CKR_OK;
	want = st.cfg.gcm_struct == GCM_WITH_IVBITS ? sizeof(CK_GCM_PARAMS) : sizeof(gcm_params5);
	if (in->ulParameterLen != want || (rv = gcm_view(in, gcm)) != CKR_OK)
		return CKR_MECHANISM_PARAM_INVALID;
	out->pParameter = gcm;
	out->ulParameterLen = sizeof *gcm;
	return CKR_OK;
}

/* token_iv turns an AES-GCM encryption with a zero IV buffer into one
 * under an IV the token draws, as HSMs in FIPS mode do; a caller's own IV
 * is refused. */
static CK_RV token_iv(CK_SESSION_HANDLE real, CK_MECHANISM *m, CK_GCM_PARAMS *gcm, CK_BYTE *iv, CK_BYTE_PTR *caller_iv)
{
	CK_GCM_PARAMS p;
	CK_ULONG i;
	CK_RV rv;
	if ((rv = gcm_view(m, &p)) != CKR_OK)
		return rv;
	if (p.ulIvLen && !p.pIv)
		return CKR_MECHANISM_PARAM_INVALID;
	for (i = 0; i < p.ulIvLen; i++)
		if (p.pIv[i])
			return CKR_MECHANISM_PARAM_INVALID;
	if (st.cfg.iv_mode == IV_WRITE_BACK && p.ulIvLen != st.cfg.iv_len)
		return CKR_MECHANISM_PARAM_INVALID;
	if ((rv = st.down->C_GenerateRandom(real, iv, st.cfg.iv_len)) != CKR_OK)
		return rv;
	*caller_iv = p.pIv;
	p.pIv = iv;
	p.ulIvLen = st.cfg.iv_len;
	p.ulIvBits = 8 * st.cfg.iv_len;
	*gcm = p;
	m->pParameter = gcm;
	m->ulParameterLen = sizeof *gcm;
	return CKR_OK;
}

/* check_template refuses to create a secret key that is not sensitive,
 * under a sensitive-by-policy profile. class is the object class when
 * the template does not name one. */
static CK_RV check_template(const CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_CLASS class)
{
	int nonsensitive = 0;
	CK_ULONG i;
	if (!st.cfg.sensitive || !t)
		return CKR_OK;
	for (i = 0; i < n; i++) {
		if (t[i].type == CKA_CLASS && t[i].pValue && t[i].ulValueLen == sizeof class)
			memcpy(&class, t[i].pValue, sizeof class);
		if (t[i].type == CKA_SENSITIVE && t[i].pValue && t[i].ulValueLen == sizeof(CK_BBOOL))
			nonsensitive = *(CK_BBOOL *)t[i].pValue == CK_FALSE;
	}
	return class == CKO_SECRET_KEY && nonsensitive ? CKR_ATTRIBUTE_VALUE_INVALID : CKR_OK;
}

/* mech_key translates the mechanism of a call that creates a secret key
 * and checks its template. */
static CK_RV mech_key(const CK_MECHANISM *pm, CK_MECHANISM *m, CK_GCM_PARAMS *gcm, const CK_ATTRIBUTE *t, CK_ULONG n)
{
	CK_RV rv = translate(pm, m, gcm);
	return rv != CKR_OK ? rv : check_template(t, n, CKO_SECRET_KEY);
}

/* secret_key says whether object o is a secret key. */
static int secret_key(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o)
{
	CK_OBJECT_CLASS c = 0;
	CK_ATTRIBUTE a = { CKA_CLASS, &c, sizeof c };
	return st.down->C_GetAttributeValue(s, o, &a, 1) == CKR_OK && c == CKO_SECRET_KEY;
}

/* ---- the forwarding functions ---- */

/* FWD forwards a call that takes no session. */
#define FWD(name, params, args)                     \
	static CK_RV shim_##name params             \
	{                                           \
		CK_RV rv = enter();                 \
		if (rv != CKR_OK)                   \
			return rv;                  \
		return leave(st.down->name args);   \
	}

/* FWD_S forwards a call on session h, as s underneath, once check gives
 * CKR_OK. A check may fill m (with gcm) for the call from the caller's
 * mechanism pm. */
#define FWD_S(name, params, check, args)                                 \
	static CK_RV shim_##name params                                  \
	{                                                                \
		CK_SESSION_HANDLE s;                                     \
		CK_MECHANISM m;                                          \
		CK_GCM_PARAMS gcm;                                       \
		CK_RV rv = enter();                                      \
		(void)m;                                                 \
		(void)gcm;                                               \
		if (rv != CKR_OK)                                        \
			return rv;                                       \
		if ((rv = real_of(h, &s)) == CKR_OK && (rv = (check)) == CKR_OK) \
			rv = st.down->name args;                         \
		return leave(rv);                                        \
	}

FWD(C_GetInfo, (CK_INFO_PTR p), (p))
FWD(C_GetSlotList, (CK_BBOOL present, CK_SLOT_ID_PTR l, CK_ULONG_PTR n), (present, l, n))
FWD(C_GetSlotInfo, (CK_SLOT_ID id, CK_SLOT_INFO_PTR p), (id, p))
FWD(C_GetTokenInfo, (CK_SLOT_ID id, CK_TOKEN_INFO_PTR p), (id, p))
FWD(C_InitToken, (CK_SLOT_ID id, CK_UTF8CHAR_PTR pin, CK_ULONG n, CK_UTF8CHAR_PTR label), (id, pin, n, label))
FWD(C_WaitForSlotEvent, (CK_FLAGS f, CK_SLOT_ID_PTR id, CK_VOID_PTR r), (f, id, r))
FWD_S(C_InitPIN, (CK_SESSION_HANDLE h, CK_UTF8CHAR_PTR pin, CK_ULONG n), CKR_OK, (s, pin, n))
FWD_S(C_SetPIN, (CK_SESSION_HANDLE h, CK_UTF8CHAR_PTR o, CK_ULONG on, CK_UTF8CHAR_PTR p, CK_ULONG pn), CKR_OK, (s, o, on, p, pn))
FWD_S(C_GetSessionInfo, (CK_SESSION_HANDLE h, CK_SESSION_INFO_PTR p), CKR_OK, (s, p))
FWD_S(C_GetOperationState, (CK_SESSION_HANDLE h, CK_BYTE_PTR p, CK_ULONG_PTR n), CKR_OK, (s, p, n))
FWD_S(C_SetOperationState, (CK_SESSION_HANDLE h, CK_BYTE_PTR p, CK_ULONG n, CK_OBJECT_HANDLE e, CK_OBJECT_HANDLE a), CKR_OK, (s, p, n, e, a))
FWD_S(C_Login, (CK_SESSION_HANDLE h, CK_USER_TYPE u, CK_UTF8CHAR_PTR pin, CK_ULONG n), CKR_OK, (s, u, pin, n))
FWD_S(C_Logout, (CK_SESSION_HANDLE h), CKR_OK, (s))
FWD_S(C_DestroyObject, (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o), CKR_OK, (s, o))
FWD_S(C_GetObjectSize, (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ULONG_PTR n), CKR_OK, (s, o, n))
FWD_S(C_SetAttributeValue, (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n), CKR_OK, (s, o, t, n))
FWD_S(C_FindObjectsInit, (CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR t, CK_ULONG n), CKR_OK, (s, t, n))
FWD_S(C_FindObjects, (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE_PTR o, CK_ULONG max, CK_ULONG_PTR n), CKR_OK, (s, o, max, n))
FWD_S(C_FindObjectsFinal, (CK_SESSION_HANDLE h), CKR_OK, (s))
FWD_S(C_EncryptUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR i, CK_ULONG in, CK_BYTE_PTR o, CK_ULONG_PTR on), CKR_OK, (s, i, in, o, on))
FWD_S(C_DecryptInit, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR pm, CK_OBJECT_HANDLE k), translate(pm, &m, &gcm), (s, &m, k))
FWD_S(C_Decrypt, (CK_SESSION_HANDLE h, CK_BYTE_PTR i, CK_ULONG in, CK_BYTE_PTR o, CK_ULONG_PTR on), CKR_OK, (s, i, in, o, on))
FWD_S(C_DecryptUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR i, CK_ULONG in, CK_BYTE_PTR o, CK_ULONG_PTR on), CKR_OK, (s, i, in, o, on))
FWD_S(C_DecryptFinal, (CK_SESSION_HANDLE h, CK_BYTE_PTR o, CK_ULONG_PTR on), CKR_OK, (s, o, on))
FWD_S(C_DigestInit, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR pm), translate(pm, &m, &gcm), (s, &m))
FWD_S(C_Digest, (CK_SESSION_HANDLE h, CK_BYTE_PTR i, CK_ULONG in, CK_BYTE_PTR o, CK_ULONG_PTR on), CKR_OK, (s, i, in, o, on))
FWD_S(C_DigestUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR i, CK_ULONG in), CKR_OK, (s, i, in))
FWD_S(C_DigestKey, (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE k), CKR_OK, (s, k))
FWD_S(C_DigestFinal, (CK_SESSION_HANDLE h, CK_BYTE_PTR o, CK_ULONG_PTR on), CKR_OK, (s, o, on))
FWD_S(C_SignInit, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR pm, CK_OBJECT_HANDLE k), translate(pm, &m, &gcm), (s, &m, k))
FWD_S(C_Sign, (CK_SESSION_HANDLE h, CK_BYTE_PTR i, CK_ULONG in, CK_BYTE_PTR o, CK_ULONG_PTR on), CKR_OK, (s, i, in, o, on))
FWD_S(C_SignUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR i, CK_ULONG in), CKR_OK, (s, i, in))
FWD_S(C_SignFinal, (CK_SESSION_HANDLE h, CK_BYTE_PTR o, CK_ULONG_PTR on), CKR_OK, (s, o, on))
FWD_S(C_SignRecoverInit, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR pm, CK_OBJECT_HANDLE k), translate(pm, &m, &gcm), (s, &m, k))
FWD_S(C_SignRecover, (CK_SESSION_HANDLE h, CK_BYTE_PTR i, CK_ULONG in, CK_BYTE_PTR o, CK_ULONG_PTR on), CKR_OK, (s, i, in, o, on))
FWD_S(C_VerifyInit, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR pm, CK_OBJECT_HANDLE k), translate(pm, &m, &gcm), (s, &m, k))
FWD_S(C_Verify, (CK_SESSION_HANDLE h, CK_BYTE_PTR i, CK_ULONG in, CK_BYTE_PTR sig, CK_ULONG sn), CKR_OK, (s, i, in, sig, sn))
FWD_S(C_VerifyUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR i, CK_ULONG in), CKR_OK, (s, i, in))
FWD_S(C_VerifyFinal, (CK_SESSION_HANDLE h, CK_BYTE_PTR sig, CK_ULONG sn), CKR_OK, (s, sig, sn))
FWD_S(C_VerifyRecoverInit, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR pm, CK_OBJECT_HANDLE k), translate(pm, &m, &gcm), (s, &m, k))
FWD_S(C_VerifyRecover, (CK_SESSION_HANDLE h, CK_BYTE_PTR i, CK_ULONG in, CK_BYTE_PTR o, CK_ULONG_PTR on), CKR_OK, (s, i, in, o, on))
FWD_S(C_DigestEncryptUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR i, CK_ULONG in, CK_BYTE_PTR o, CK_ULONG_PTR on), CKR_OK, (s, i, in, o, on))
FWD_S(C_DecryptDigestUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR i, CK_ULONG in, CK_BYTE_PTR o, CK_ULONG_PTR on), CKR_OK, (s, i, in, o, on))
FWD_S(C_SignEncryptUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR i, CK_ULONG in, CK_BYTE_PTR o, CK_ULONG_PTR on), CKR_OK, (s, i, in, o, on))
FWD_S(C_DecryptVerifyUpdate, (CK_SESSION_HANDLE h, CK_BYTE_PTR i, CK_ULONG in, CK_BYTE_PTR o, CK_ULONG_PTR on), CKR_OK, (s, i, in, o, on))
FWD_S(C_GenerateKeyPair, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR pm, CK_ATTRIBUTE_PTR pub, CK_ULONG pubn, CK_ATTRIBUTE_PTR priv, CK_ULONG privn, CK_OBJECT_HANDLE_PTR pubk, CK_OBJECT_HANDLE_PTR privk), translate(pm, &m, &gcm), (s, &m, pub, pubn, priv, privn, pubk, privk))
FWD_S(C_WrapKey, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR pm, CK_OBJECT_HANDLE w, CK_OBJECT_HANDLE k, CK_BYTE_PTR o, CK_ULONG_PTR on), translate(pm, &m, &gcm), (s, &m, w, k, o, on))
FWD_S(C_SeedRandom, (CK_SESSION_HANDLE h, CK_BYTE_PTR p, CK_ULONG n), CKR_OK, (s, p, n))
FWD_S(C_GenerateRandom, (CK_SESSION_HANDLE h, CK_BYTE_PTR p, CK_ULONG n), CKR_OK, (s, p, n))
FWD_S(C_GetFunctionStatus, (CK_SESSION_HANDLE h), CKR_OK, (s))
FWD_S(C_CancelFunction, (CK_SESSION_HANDLE h), CKR_OK, (s))

/* The key-creating calls: the template is checked too. */
FWD_S(C_CreateObject, (CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR o),
      check_template(t, n, (CK_OBJECT_CLASS)-1), (s, t, n, o))
FWD_S(C_CopyObject, (CK_SESSION_HANDLE h, CK_OBJECT_HANDLE from, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR o),
      check_template(t, n, st.cfg.sensitive && secret_key(s, from) ? CKO_SECRET_KEY : (CK_OBJECT_CLASS)-1), (s, from, t, n, o))
FWD_S(C_GenerateKey, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR pm, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR k),
      mech_key(pm, &m, &gcm, t, n), (s, &m, t, n, k))
FWD_S(C_UnwrapKey, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR pm, CK_OBJECT_HANDLE w, CK_BYTE_PTR in, CK_ULONG inn, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR k),
      mech_key(pm, &m, &gcm, t, n), (s, &m, w, in, inn, t, n, k))
FWD_S(C_DeriveKey, (CK_SESSION_HANDLE h, CK_MECHANISM_PTR pm, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR k),
      mech_key(pm, &m, &gcm, t, n), (s, &m, b, t, n, k))

/* ---- the calls with behaviour of their own ---- */

static CK_RV shim_C_Initialize(CK_VOID_PTR args)
{
	CK_C_GetFunctionList get;
	CK_FUNCTION_LIST_PTR down = NULL;
	struct config cfg;
	CK_RV rv;

	pthread_mutex_lock(&st.mu);
	if (st.down) {
		pthread_mutex_unlock(&st.mu);
		return CKR_CRYPTOKI_ALREADY_INITIALIZED;
	}
	if ((rv = load_config(&cfg)) == CKR_OK && !(st.dl = dlopen(cfg.module, RTLD_NOW | RTLD_LOCAL))) {
		fprintf(stderr, "p11shim: %s\n", dlerror());
		rv = CKR_GENERAL_ERROR;
	}
	if (rv == CKR_OK && !(get = (CK_C_GetFunctionList)dlsym(st.dl, "C_GetFunctionList")))
		rv = CKR_GENERAL_ERROR;
	if (rv == CKR_OK && (rv = get(&down)) == CKR_OK)
		rv = down->C_Initialize(args);
	if (rv == CKR_OK) {
		st.down = down;
		st.cfg = cfg;
		st.calls = 0;
		st.nsess = 0;
		st.next = 1;
	} else if (st.dl) {
		dlclose(st.dl);
		st.dl = NULL;
	}
	pthread_mutex_unlock(&st.mu);
	return rv;
}

static CK_RV shim_C_Finalize(CK_VOID_PTR reserved)
{
	CK_RV rv;
	pthread_mutex_lock(&st.mu);
	if (!st.down) {
		pthread_mutex_unlock(&st.mu);
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	}
	if ((rv = st.down->C_Finalize(reserved)) == CKR_OK) {
		st.down = NULL;
		dlclose(st.dl);
		st.dl = NULL;
		free(st.sess);
		st.sess = NULL;
		st.nsess = st.capsess = 0;
	}
	pthread_mutex_unlock(&st.mu);
	return rv;
}

static CK_RV shim_C_GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count)
{
	CK_MECHANISM_TYPE *all;
	CK_ULONG i, k = 0, n = 0;
	CK_RV rv = enter();
	if (rv != CKR_OK)
		return rv;
	if (!count)
		return leave(CKR_ARGUMENTS_BAD);
	if ((rv = st.down->C_GetMechanismList(slot, NULL, &n)) != CKR_OK)
		return leave(rv);
	if (!(all = calloc(n ? n : 1, sizeof *all)))
		return leave(CKR_HOST_MEMORY);
	if ((rv = st.down->C_GetMechanismList(slot, all, &n)) == CKR_OK) {
		for (i = 0; i < n; i++) {
			if (hidden(all[i]))
				continue;
			all[k++] = st.cfg.kwp && all[i] == CKM_AES_KEY_WRAP_PAD ? st.cfg.kwp : all[i];
		}
		if (list && *count < k)
			rv = CKR_BUFFER_TOO_SMALL;
		else if (list)
			memcpy(list, all, k * sizeof *all);
		*count = k;
	}
	free(all);
	return leave(rv);
}

static CK_RV shim_C_GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE m, CK_MECHANISM_INFO_PTR info)
{
	CK_RV rv = enter();
	if (rv != CKR_OK)
		return rv;
	if ((rv = rename_in(&m)) == CKR_OK)
		rv = st.down->C_GetMechanismInfo(slot, m, info);
	return leave(rv);
}

static CK_RV shim_C_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify, CK_SESSION_HANDLE_PTR ph)
{
	CK_SESSION_HANDLE real;
	CK_ULONG open = 0;
	size_t i;
	CK_RV rv = enter();
	if (rv != CKR_OK)
		return rv;
	if (!ph)
		return leave(CKR_ARGUMENTS_BAD);
	/* AWS CloudHSM Client SDK 5 supports read-write sessions only. */
	if (st.cfg.refuse_ro && !(flags & CKF_RW_SESSION))
		return leave(CKR_FUNCTION_FAILED);
	if ((rv = st.down->C_OpenSession(slot, flags, app, notify, &real)) != CKR_OK)
		return leave(rv);
	pthread_mutex_lock(&st.mu);
	for (i = 0; i < st.nsess; i++)
		open += st.sess[i].slot == slot;
	if (st.cfg.max_sessions && open >= st.cfg.max_sessions)
		rv = CKR_SESSION_COUNT;
	if (rv == CKR_OK && st.nsess == st.capsess) {
		size_t c = st.capsess ? 2 * st.capsess : 16;
		struct session *p = realloc(st.sess, c * sizeof *p);
		if (p) {
			st.sess = p;
			st.capsess = c;
		} else {
			rv = CKR_HOST_MEMORY;
		}
	}
	if (rv == CKR_OK) {
		struct session *s = &st.sess[st.nsess++];
		memset(s, 0, sizeof *s);
		s->virt = *ph = st.next++;
		s->real = real;
		s->slot = slot;
	}
	pthread_mutex_unlock(&st.mu);
	if (rv != CKR_OK)
		st.down->C_CloseSession(real);
	return leave(rv);
}

static CK_RV shim_C_CloseSession(CK_SESSION_HANDLE h)
{
	struct session *s;
	CK_SESSION_HANDLE real = 0;
	CK_RV rv = enter();
	if (rv != CKR_OK)
		return rv;
	pthread_mutex_lock(&st.mu);
	if ((s = find(h))) {
		real = s->real;
		*s = st.sess[--st.nsess];
	}
	pthread_mutex_unlock(&st.mu);
	return leave(s ? st.down->C_CloseSession(real) : CKR_SESSION_HANDLE_INVALID);
}

static CK_RV shim_C_CloseAllSessions(CK_SLOT_ID slot)
{
	size_t i = 0;
	CK_RV rv = enter();
	if (rv != CKR_OK)
		return rv;
	if ((rv = st.down->C_CloseAllSessions(slot)) == CKR_OK) {
		pthread_mutex_lock(&st.mu);
		while (i < st.nsess) {
			if (st.sess[i].slot == slot)
				st.sess[i] = st.sess[--st.nsess];
			else
				i++;
		}
		pthread_mutex_unlock(&st.mu);
	}
	return leave(rv);
}

static CK_RV shim_C_GetAttributeValue(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
	CK_ATTRIBUTE_PTR rest;
	CK_SESSION_HANDLE s;
	CK_ULONG i, k = 0;
	int value = 0;
	CK_RV rv = enter();
	if (rv != CKR_OK)
		return rv;
	if ((rv = real_of(h, &s)) != CKR_OK)
		return leave(rv);
	for (i = 0; t && i < n; i++)
		value |= t[i].type == CKA_VALUE;
	if (!st.cfg.sensitive || !value || !secret_key(s, o))
		return leave(st.down->C_GetAttributeValue(s, o, t, n));
	/* An HSM that keeps every secret key sensitive answers the other
	 * attributes and marks the value unavailable. */
	if (!(rest = calloc(n, sizeof *rest)))
		return leave(CKR_HOST_MEMORY);
	for (i = 0; i < n; i++)
		if (t[i].type != CKA_VALUE)
			rest[k++] = t[i];
	rv = k ? st.down->C_GetAttributeValue(s, o, rest, k) : CKR_OK;
	for (i = 0, k = 0; i < n; i++)
		t[i].ulValueLen = t[i].type == CKA_VALUE ? CK_UNAVAILABLE_INFORMATION : rest[k++].ulValueLen;
	free(rest);
	if (rv == CKR_OK || rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_BUFFER_TOO_SMALL)
		rv = CKR_ATTRIBUTE_SENSITIVE;
	return leave(rv);
}

static CK_RV shim_C_EncryptInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR pm, CK_OBJECT_HANDLE k)
{
	CK_SESSION_HANDLE s;
	CK_MECHANISM m;
	CK_GCM_PARAMS gcm;
	CK_BYTE iv[MAX_IV] = { 0 };
	CK_BYTE_PTR caller_iv = NULL;
	enum iv_mode mode = IV_CALLER;
	CK_RV rv = enter();
	if (rv != CKR_OK)
		return rv;
	if ((rv = real_of(h, &s)) == CKR_OK && (rv = translate(pm, &m, &gcm)) == CKR_OK &&
	    m.mechanism == CKM_AES_GCM && st.cfg.iv_mode != IV_CALLER) {
		mode = st.cfg.iv_mode;
		rv = token_iv(s, &m, &gcm, iv, &caller_iv);
	}
	if (rv == CKR_OK)
		rv = st.down->C_EncryptInit(s, &m, k);
	if (rv == CKR_OK)
		set_pending(h, mode, iv, mode == IV_CALLER ? 0 : st.cfg.iv_len, caller_iv);
	return leave(rv);
}

static CK_RV down_encrypt(CK_SESSION_HANDLE s, int final, CK_BYTE_PTR in, CK_ULONG inn, CK_BYTE_PTR out, CK_ULONG_PTR outn)
{
	return final ? st.down->C_EncryptFinal(s, out, outn) : st.down->C_Encrypt(s, in, inn, out, outn);
}

/* encrypt_end finishes an encryption (C_Encrypt or C_EncryptFinal) and
 * hands back a token-generated IV the way the profile's HSM does: written
 * into the caller's CK_GCM_PARAMS.pIv buffer, or appended to the output. */
static CK_RV encrypt_end(CK_SESSION_HANDLE h, int final, CK_BYTE_PTR in, CK_ULONG inn, CK_BYTE_PTR out, CK_ULONG_PTR outn)
{
	struct session p;
	CK_ULONG need = 0;
	CK_RV rv = enter();
	if (rv != CKR_OK)
		return rv;
	if ((rv = lookup(h, &p)) != CKR_OK || !outn)
		return leave(rv != CKR_OK ? rv : CKR_ARGUMENTS_BAD);
	if (p.pending != IV_APPEND) {
		rv = down_encrypt(p.real, final, in, inn, out, outn);
		if (rv == CKR_OK && !out)
			return leave(rv); /* a length query; the operation goes on */
		if (rv == CKR_OK && p.pending == IV_WRITE_BACK)
			memcpy(p.caller_iv, p.iv, p.iv_len);
	} else if ((rv = down_encrypt(p.real, final, in, inn, NULL, &need)) == CKR_OK) {
		if (!out) {
			*outn = need + p.iv_len;
			return leave(rv);
		}
		if (*outn < need + p.iv_len) {
			*outn = need + p.iv_len;
			return leave(CKR_BUFFER_TOO_SMALL);
		}
		if ((rv = down_encrypt(p.real, final, in, inn, out, &need)) == CKR_OK) {
			memcpy(out + need, p.iv, p.iv_len);
			*outn = need + p.iv_len;
		}
	}
	if (rv != CKR_BUFFER_TOO_SMALL)
		set_pending(h, IV_CALLER, p.iv, 0, NULL);
	return leave(rv);
}

static CK_RV shim_C_Encrypt(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG inn, CK_BYTE_PTR out, CK_ULONG_PTR outn)
{
	return encrypt_end(h, 0, in, inn, out, outn);
}

static CK_RV shim_C_EncryptFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG_PTR outn)
{
	return encrypt_end(h, 1, NULL, 0, out, outn);
}

/* ---- the function list ---- */

static CK_RV shim_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR pp);

#undef CK_NEED_ARG_LIST
#define CK_PKCS11_FUNCTION_INFO(name) shim_##name,
static CK_FUNCTION_LIST functions = {
	{ 2, 40 },
#include "pkcs11f.h"
};
#undef CK_PKCS11_FUNCTION_INFO

static CK_RV shim_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR pp)
{
	if (!pp)
		return CKR_ARGUMENTS_BAD;
	*pp = &functions;
	return CKR_OK;
}

__attribute__((visibility("default"))) CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR pp)
{
	return shim_C_GetFunctionList(pp);
}
