from modelsmith.cli import main

raise SystemExit(main())
