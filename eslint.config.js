// TypeScript lint, plus the one-way data flow of DESIGN.md section 2 as import rules:
// codec and store know nothing of service, transport or each other; only main/cli reach service.
import tseslint from 'typescript-eslint';

const forbid = (from, ...targets) => ({
  files: [`src/${from}/**/*.ts`],
  rules: {
    'no-restricted-imports': [
      'error',
      { patterns: targets.map((t) => ({ group: [`**/${t}/*`], message: `src/${from} must not import src/${t} (one-way data flow)` })) },
    ],
  },
});

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'build*/**', 'cuda/**', 'connector-py/**', '.venv/**', '.cache/**', 'examples/**'] },
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-non-null-assertion': 'off',
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  forbid('codec', 'service', 'transport', 'store', 'cli'),
  forbid('store', 'service', 'transport', 'codec', 'cli'),
  forbid('transport', 'service', 'store', 'cli'),
  forbid('protocol', 'service', 'transport', 'store', 'cli'),
  forbid('core', 'service', 'transport', 'store', 'codec', 'cli', 'calibrate', 'protocol'),
);
